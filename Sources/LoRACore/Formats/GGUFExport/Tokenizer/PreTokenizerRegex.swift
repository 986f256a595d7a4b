/// The regular expressions of Hugging Face `tokenizers` pre-tokenizers (Oniguruma syntax, as the
/// `Split` pre-tokenizer and `ByteLevel(use_regex)` use them), matched leftmost-first with
/// backtracking, greedy and lazy quantifiers in Oniguruma's priority order.
///
/// Supported: literals and escapes (`\r \n \t \f \v \x.. \u....`, escaped punctuation), `.`,
/// classes `[...]` (ranges, negation, nested escapes), `\s \S \d \D \w \W`, `\p{…}`/`\P{…}` for
/// Unicode general categories (`L`, `Lu`, `N`, `Nd`, `P`, `S`, `M`, `Z`, `C` and the other two-letter
/// ones), groups `(…)`, `(?:…)`, `(?i:…)` (simple case folding), alternation, `? * + {n} {n,} {n,m}`
/// and their lazy forms, lookahead `(?=…)`/`(?!…)`. Anything else (scripts such as `\p{Han}`,
/// lookbehind, backreferences, possessive quantifiers, anchors) is `Unsupported`, so a tokenizer
/// using it is refused rather than split differently.
///
/// `\s` is White_Space (Oniguruma's Unicode `\s`: tab to carriage return, NEL and the Z separators).
struct PreTokenizerRegex: Sendable {
    struct Unsupported: Error, Sendable {
        var detail: String
    }

    indirect enum Node: Sendable {
        case scalars(ScalarClass)
        case sequence([Node])
        case alternation([Node])
        case repetition(Node, min: Int, max: Int?, lazy: Bool)
        case lookahead(Node, negated: Bool)
    }

    /// A predicate on one scalar.
    indirect enum ScalarClass: Sendable {
        case literal(Unicode.Scalar)
        case any  // `.`: everything but \n
        case range(Unicode.Scalar, Unicode.Scalar)
        case category(String)  // a general category letter or pair
        case space, digit, word
        case union([ScalarClass])
        case not(ScalarClass)

        func contains(_ s: Unicode.Scalar) -> Bool {
            switch self {
            case let .literal(l): return s == l
            case .any: return s != "\n"
            case let .range(a, b): return a.value <= s.value && s.value <= b.value
            case let .category(c): return PreTokenizerRegex.category(of: s).hasPrefix(c)
            case .space: return s.properties.isWhitespace
            case .digit: return s.properties.generalCategory == .decimalNumber
            case .word:
                let c = PreTokenizerRegex.category(of: s)
                return c.hasPrefix("L") || c.hasPrefix("M") || c == "Nd" || c == "Pc"
            case let .union(items): return items.contains { $0.contains(s) }
            case let .not(inner): return !inner.contains(s)
            }
        }
    }

    let root: Node

    /// - Throws: `Unsupported` naming the construct.
    init(_ pattern: String) throws {
        var parser = Parser(scalars: Array(pattern.unicodeScalars))
        root = try parser.alternation(caseInsensitive: false)
        guard parser.index == parser.scalars.count else { throw Unsupported(detail: "unbalanced ')' in the pattern") }
    }

    /// The leftmost-first match starting at or after `from`, as a range of scalar offsets.
    func firstMatch(in text: [Unicode.Scalar], from: Int) -> Range<Int>? {
        var start = from
        while start <= text.count {
            var end: Int?
            _ = match(root, text, start) { e in end = e; return true }
            if let end { return start..<end }
            start += 1
        }
        return nil
    }

    /// The pieces of `text` as a `Split` leaves them: each match, and each run between matches, in
    /// order, with whether it is a match (`Isolated` keeps both, `Removed` drops the matches; empty
    /// matches split nothing).
    func splitPieces(_ text: [Unicode.Scalar]) -> [(range: Range<Int>, isMatch: Bool)] {
        var pieces: [(range: Range<Int>, isMatch: Bool)] = []
        var position = 0, search = 0
        while search <= text.count, let m = firstMatch(in: text, from: search) {
            if m.isEmpty { search = m.lowerBound + 1; continue }
            if m.lowerBound > position { pieces.append((position..<m.lowerBound, false)) }
            pieces.append((m, true))
            position = m.upperBound
            search = m.upperBound
        }
        if position < text.count { pieces.append((position..<text.count, false)) }
        return pieces
    }

    /// Continuation-passing backtracking: `k` gets each end position in priority order until it accepts.
    private func match(_ node: Node, _ text: [Unicode.Scalar], _ i: Int, _ k: (Int) -> Bool) -> Bool {
        switch node {
        case let .scalars(c):
            return i < text.count && c.contains(text[i]) && k(i + 1)
        case let .sequence(items):
            return sequence(items[...], text, i, k)
        case let .alternation(branches):
            return branches.contains { match($0, text, i, k) }
        case let .repetition(inner, min, max, lazy):
            return repeatMatch(inner, min: min, max: max, lazy: lazy, count: 0, text, i, k)
        case let .lookahead(inner, negated):
            let found = match(inner, text, i) { _ in true }
            return found != negated && k(i)
        }
    }

    private func sequence(_ items: ArraySlice<Node>, _ text: [Unicode.Scalar], _ i: Int, _ k: (Int) -> Bool) -> Bool {
        guard let first = items.first else { return k(i) }
        return match(first, text, i) { sequence(items.dropFirst(), text, $0, k) }
    }

    private func repeatMatch(_ inner: Node, min: Int, max: Int?, lazy: Bool, count: Int, _ text: [Unicode.Scalar], _ i: Int,
                             _ k: (Int) -> Bool) -> Bool {
        let canStop = count >= min
        let canGo = max.map { count < $0 } ?? true
        // Another iteration must consume something (an empty iteration would loop forever).
        func more() -> Bool {
            canGo && match(inner, text, i) { e in e > i && repeatMatch(inner, min: min, max: max, lazy: lazy, count: count + 1, text, e, k) }
        }
        if lazy { return (canStop && k(i)) || more() }
        return more() || (canStop && k(i))
    }

    /// The two-letter general category of `s` (`Lu`, `Nd`, `Zs`, …).
    static func category(of s: Unicode.Scalar) -> String {
        switch s.properties.generalCategory {
        case .uppercaseLetter: return "Lu"
        case .lowercaseLetter: return "Ll"
        case .titlecaseLetter: return "Lt"
        case .modifierLetter: return "Lm"
        case .otherLetter: return "Lo"
        case .nonspacingMark: return "Mn"
        case .spacingMark: return "Mc"
        case .enclosingMark: return "Me"
        case .decimalNumber: return "Nd"
        case .letterNumber: return "Nl"
        case .otherNumber: return "No"
        case .connectorPunctuation: return "Pc"
        case .dashPunctuation: return "Pd"
        case .openPunctuation: return "Ps"
        case .closePunctuation: return "Pe"
        case .initialPunctuation: return "Pi"
        case .finalPunctuation: return "Pf"
        case .otherPunctuation: return "Po"
        case .mathSymbol: return "Sm"
        case .currencySymbol: return "Sc"
        case .modifierSymbol: return "Sk"
        case .otherSymbol: return "So"
        case .spaceSeparator: return "Zs"
        case .lineSeparator: return "Zl"
        case .paragraphSeparator: return "Zp"
        case .control: return "Cc"
        case .format: return "Cf"
        case .surrogate: return "Cs"
        case .privateUse: return "Co"
        case .unassigned: return "Cn"
        @unknown default: return "Cn"
        }
    }

    static let categories: Set<String> = ["L", "Lu", "Ll", "Lt", "Lm", "Lo", "M", "Mn", "Mc", "Me", "N", "Nd", "Nl", "No",
                                          "P", "Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "S", "Sm", "Sc", "Sk", "So",
                                          "Z", "Zs", "Zl", "Zp", "C", "Cc", "Cf", "Cs", "Co", "Cn"]

    // MARK: - Parsing

    private struct Parser {
        let scalars: [Unicode.Scalar]
        var index = 0

        var peek: Unicode.Scalar? { index < scalars.count ? scalars[index] : nil }

        mutating func next() throws -> Unicode.Scalar {
            guard index < scalars.count else { throw Unsupported(detail: "the pattern ends inside a construct") }
            defer { index += 1 }
            return scalars[index]
        }

        mutating func alternation(caseInsensitive: Bool) throws -> Node {
            var branches = [try sequence(caseInsensitive: caseInsensitive)]
            while peek == "|" {
                index += 1
                branches.append(try sequence(caseInsensitive: caseInsensitive))
            }
            return branches.count == 1 ? branches[0] : .alternation(branches)
        }

        mutating func sequence(caseInsensitive: Bool) throws -> Node {
            var items: [Node] = []
            while let c = peek, c != "|", c != ")" {
                var atom = try self.atom(caseInsensitive: caseInsensitive)
                atom = try quantified(atom)
                items.append(atom)
            }
            return items.count == 1 ? items[0] : .sequence(items)
        }

        mutating func quantified(_ atom: Node) throws -> Node {
            guard let c = peek else { return atom }
            var bounds: (Int, Int?)
            switch c {
            case "?": bounds = (0, 1)
            case "*": bounds = (0, nil)
            case "+": bounds = (1, nil)
            case "{":
                guard let b = try braces() else { return atom }
                bounds = b
            default: return atom
            }
            if c != "{" { index += 1 }
            var lazy = false
            if peek == "?" { lazy = true; index += 1 } else if peek == "+" {
                throw Unsupported(detail: "possessive quantifier at offset \(index)")
            }
            return .repetition(atom, min: bounds.0, max: bounds.1, lazy: lazy)
        }

        /// `{n}`, `{n,}`, `{n,m}` (consumed), or nil when the brace is a literal.
        mutating func braces() throws -> (Int, Int?)? {
            var j = index + 1
            func number() -> Int? {
                var n: Int?
                while j < scalars.count, let d = Int(String(scalars[j])), scalars[j].isASCII { n = (n ?? 0) * 10 + d; j += 1 }
                return n
            }
            guard let lo = number() else { return nil }
            var hi: Int? = lo
            if j < scalars.count && scalars[j] == "," {
                j += 1
                hi = number()
            }
            guard j < scalars.count && scalars[j] == "}" else { return nil }
            index = j + 1
            return (lo, hi)
        }

        mutating func atom(caseInsensitive: Bool) throws -> Node {
            let c = try next()
            switch c {
            case "(":
                var insensitive = caseInsensitive
                if peek == "?" {
                    index += 1
                    switch try next() {
                    case ":": break
                    case "i":
                        guard try next() == ":" else { throw Unsupported(detail: "inline flags other than (?i:…)") }
                        insensitive = true
                    case "=", "!":
                        let negated = scalars[index - 1] == "!"
                        let inner = try alternation(caseInsensitive: caseInsensitive)
                        guard try next() == ")" else { throw Unsupported(detail: "unclosed lookahead") }
                        return .lookahead(inner, negated: negated)
                    default: throw Unsupported(detail: "group syntax (?\(scalars[index - 1])")
                    }
                }
                let inner = try alternation(caseInsensitive: insensitive)
                guard try next() == ")" else { throw Unsupported(detail: "unclosed group") }
                return inner
            case "[": return .scalars(try bracket(caseInsensitive: caseInsensitive))
            case ".": return .scalars(.any)
            case "\\": return .scalars(try escape(inClass: false))
            case "^", "$": throw Unsupported(detail: "anchor '\(c)'")
            case "*", "+", "?": throw Unsupported(detail: "quantifier '\(c)' with nothing to repeat")
            default: return .scalars(folded(c, caseInsensitive))
            }
        }

        /// A literal, with its simple case-fold partners under `(?i)`.
        func folded(_ c: Unicode.Scalar, _ caseInsensitive: Bool) -> ScalarClass {
            guard caseInsensitive else { return .literal(c) }
            var variants: [Unicode.Scalar] = [c]
            for s in [String(c).lowercased(), String(c).uppercased()] where s.unicodeScalars.count == 1 {
                let v = s.unicodeScalars.first!
                if !variants.contains(v) { variants.append(v) }
            }
            // Unicode simple folds onto ASCII letters: ſ → s, K (Kelvin) → k.
            if variants.contains("s") { variants.append("\u{017F}") }
            if variants.contains("k") { variants.append("\u{212A}") }
            return variants.count == 1 ? .literal(c) : .union(variants.map { .literal($0) })
        }

        mutating func bracket(caseInsensitive: Bool) throws -> ScalarClass {
            var negated = false
            if peek == "^" { negated = true; index += 1 }
            var items: [ScalarClass] = []
            var first = true
            while true {
                let c = try next()
                if c == "]" && !first { break }
                first = false
                var item: ScalarClass
                if c == "\\" { item = try escape(inClass: true) } else if c == "[" {
                    throw Unsupported(detail: "nested class at offset \(index - 1)")
                } else { item = folded(c, caseInsensitive) }
                if case let .literal(lo) = item, peek == "-", index + 1 < scalars.count, scalars[index + 1] != "]" {
                    index += 1
                    var hiScalar = try next()
                    if hiScalar == "\\" {
                        guard case let .literal(h) = try escape(inClass: true) else { throw Unsupported(detail: "a class range ending in a class") }
                        hiScalar = h
                    }
                    guard lo.value <= hiScalar.value else { throw Unsupported(detail: "a reversed class range") }
                    item = .range(lo, hiScalar)
                }
                items.append(item)
            }
            let set = ScalarClass.union(items)
            return negated ? .not(set) : set
        }

        mutating func escape(inClass: Bool) throws -> ScalarClass {
            let c = try next()
            switch c {
            case "s": return .space
            case "S": return .not(.space)
            case "d": return .digit
            case "D": return .not(.digit)
            case "w": return .word
            case "W": return .not(.word)
            case "r": return .literal("\r")
            case "n": return .literal("\n")
            case "t": return .literal("\t")
            case "f": return .literal("\u{0C}")
            case "v": return .literal("\u{0B}")
            case "p", "P":
                guard try next() == "{" else { throw Unsupported(detail: "\\\(c) without {…}") }
                var name = ""
                while let s = peek, s != "}" { name.unicodeScalars.append(s); index += 1 }
                index += 1
                guard PreTokenizerRegex.categories.contains(name) else { throw Unsupported(detail: "Unicode property \\p{\(name)}") }
                return c == "p" ? .category(name) : .not(.category(name))
            case "x", "u":
                let digits = c == "x" ? 2 : 4
                var v: UInt32 = 0
                for _ in 0..<digits {
                    guard let d = UInt32(String(try next()), radix: 16) else { throw Unsupported(detail: "\\\(c) escape") }
                    v = v * 16 + d
                }
                guard let s = Unicode.Scalar(v) else { throw Unsupported(detail: "\\\(c) escape") }
                return .literal(s)
            default:
                guard !c.properties.isAlphabetic && !("0"..."9").contains(c) else { throw Unsupported(detail: "escape \\\(c)") }
                return .literal(c)
            }
        }
    }
}
