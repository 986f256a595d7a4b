/// A set of Unicode scalars as one position of a Python `re` pattern matches it: a literal, `.`, a class
/// `[...]` (ranges, `\d \w \s` and their negations, negation of the whole class) or an escape category.
///
/// The categories follow Python's `str`-pattern (Unicode) meanings, not Swift's:
/// - `\d`: Unicode decimal digits (`str.isdecimal()`, general category Nd);
/// - `\w`: `str.isalnum()` or `_`: letters (Lu Ll Lt Lm Lo) and anything with a numeric value;
/// - `\s`: the 29 scalars for which `str.isspace()` is true (ASCII `\t\n\v\f\r`, `\x1c`–`\x1f`, space,
///   U+0085, U+00A0, U+1680, U+2000–U+200A, U+2028, U+2029, U+202F, U+205F, U+3000).
/// Python's Unicode database (14.0 in Python 3.11) and Swift's may differ on scalars assigned since.
struct RegexScalarSet: Sendable, Equatable {
    /// One of Python's class escapes.
    enum Category: Sendable, Equatable {
        case digit, word, space
    }

    /// Inclusive scalar-value ranges (a literal is a range of one).
    var ranges: [ClosedRange<UInt32>] = []
    /// Categories, each possibly negated (`\D`, `\W`, `\S`).
    var categories: [(category: Category, negated: Bool)] = []
    /// `[^...]`: the set matches what none of its items match.
    var negated = false

    static func == (l: RegexScalarSet, r: RegexScalarSet) -> Bool {
        l.ranges == r.ranges && l.negated == r.negated && l.categories.map(\.category) == r.categories.map(\.category)
            && l.categories.map(\.negated) == r.categories.map(\.negated)
    }

    /// One literal scalar value.
    static func literal(_ value: UInt32) -> RegexScalarSet { RegexScalarSet(ranges: [value...value]) }
    /// Python's `.` without DOTALL: anything but `\n`.
    static let dot = RegexScalarSet(ranges: [10...10], negated: true)
    /// A category escape outside a class (`\d`, `\W`, ...).
    static func category(_ c: Category, negated: Bool) -> RegexScalarSet {
        RegexScalarSet(categories: [(c, negated)])
    }

    /// Whether `scalar` is in the set.
    func contains(_ scalar: Unicode.Scalar) -> Bool {
        let v = scalar.value
        var hit = false
        for r in ranges where r.contains(v) {
            hit = true
            break
        }
        if !hit {
            for (c, n) in categories where Self.test(c, scalar) != n {
                hit = true
                break
            }
        }
        return hit != negated
    }

    static func test(_ c: Category, _ s: Unicode.Scalar) -> Bool {
        switch c {
        case .digit: return isDigit(s)
        case .word: return isWord(s)
        case .space: return isSpace(s)
        }
    }

    /// Python's `\d` for `str` patterns: `str.isdecimal()`.
    static func isDigit(_ s: Unicode.Scalar) -> Bool {
        if s.isASCII { return s.value >= 48 && s.value <= 57 }
        return s.properties.numericType == .decimal
    }

    /// Python's `\w` for `str` patterns: `str.isalnum()` or `_`.
    static func isWord(_ s: Unicode.Scalar) -> Bool {
        let v = s.value
        if s.isASCII {
            return (v >= 48 && v <= 57) || (v >= 65 && v <= 90) || (v >= 97 && v <= 122) || v == 95
        }
        switch s.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return true
        default: return s.properties.numericType != nil
        }
    }

    /// Python's `\s` for `str` patterns: `str.isspace()`.
    static func isSpace(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 9...13, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
        default: return false
        }
    }
}
