/// Parses a `str` pattern as Python 3.11's `re._parser` and `re._compiler` read it, into a `RegexNode`.
///
/// Every rule that decides whether Python accepts a pattern is mirrored (tokenizing `\x` pairs first,
/// `{` that is not a valid quantifier being a literal, `]` first in a class being a literal, `[` inside a
/// class being a literal, ranges, "nothing to repeat", "multiple repeat", group names and references,
/// fixed-width lookbehind). Constructs Python accepts but the matcher does not implement (inline flags,
/// backreferences, conditionals, atomic groups, possessive quantifiers, comments, `\N{…}`) are parsed
/// with Python's grammar and recorded in `unsupported`, so a pattern Python rejects is always reported as
/// invalid, never as unsupported.
struct PythonRegexParser {
    /// A syntax error, as Python reports it: a message and a scalar offset in the pattern.
    struct SyntaxError: Error {
        var message: String
        var position: Int
    }

    /// One token of Python's `Tokenizer`: a scalar, or a backslash and the scalar after it.
    private struct Token {
        var scalar: Unicode.Scalar
        var escaped: Bool
        var position: Int
        func `is`(_ c: Unicode.Scalar) -> Bool { !escaped && scalar == c }
        var text: String { escaped ? "\\" + String(scalar) : String(scalar) }
    }

    /// What a class item or escape stands for.
    private enum Code {
        case literal(UInt32)
        case category(RegexScalarSet.Category, negated: Bool)
        case anchor(RegexNode.Anchor)
        case node(RegexNode)
    }

    /// The kind of the last item of a sequence, for Python's repeat checks.
    private enum ItemKind { case anchor, repeated, other }

    /// Python's `MAXREPEAT` (64-bit builds): a repeat count at or above it is an `OverflowError`.
    static let maxRepeat = 4_294_967_295
    /// Deepest group nesting accepted (Python's own limit is its recursion limit); deeper is refused
    /// at once, before the recursion can exhaust the stack (200 levels did under AddressSanitizer).
    static let maxNesting = 64

    private let tokens: [Token]
    private let end: Int
    private var index = 0
    private var groups = 1
    private var closedGroups = Set<Int>()
    private var groupNames: [String: Int] = [:]
    private var lookbehindGroups: Int?
    private var conditionalReferences: [(group: Int, position: Int)] = []
    private var lookbehinds: [(node: RegexNode, position: Int)] = []
    /// The first construct outside the supported subset, if any.
    private(set) var unsupported: String?

    /// Parses `pattern`.
    /// - Returns: the tree and the first unsupported construct (the tree is only meaningful when nil).
    /// - Throws: `SyntaxError` for what Python rejects.
    static func parse(_ pattern: String) throws -> (node: RegexNode, unsupported: String?) {
        var parser = try PythonRegexParser(pattern)
        let node = try parser.parseAlternation(nested: 0)
        if let t = parser.peek() {
            // Only ")" stops the top-level alternation.
            throw SyntaxError(message: "unbalanced parenthesis", position: t.position)
        }
        for (g, pos) in parser.conditionalReferences where g >= parser.groups {
            throw SyntaxError(message: "invalid group reference \(g)", position: pos)
        }
        for (look, pos) in parser.lookbehinds {
            let w = look.width
            if w.max != w.min { throw SyntaxError(message: "look-behind requires fixed-width pattern", position: pos) }
        }
        return (node, parser.unsupported)
    }

    private init(_ pattern: String) throws {
        var out: [Token] = []
        let scalars = Array(pattern.unicodeScalars)
        var i = 0
        while i < scalars.count {
            if scalars[i] == "\\" {
                guard i + 1 < scalars.count else {
                    throw SyntaxError(message: "bad escape (end of pattern)", position: i)
                }
                out.append(Token(scalar: scalars[i + 1], escaped: true, position: i))
                i += 2
            } else {
                out.append(Token(scalar: scalars[i], escaped: false, position: i))
                i += 1
            }
        }
        tokens = out
        end = scalars.count
    }

    // MARK: - Tokens

    private func peek() -> Token? { index < tokens.count ? tokens[index] : nil }
    private var position: Int { peek()?.position ?? end }

    private mutating func get() -> Token? {
        defer { if index < tokens.count { index += 1 } }
        return peek()
    }

    private mutating func match(_ c: Unicode.Scalar) -> Bool {
        if let t = peek(), t.is(c) {
            index += 1
            return true
        }
        return false
    }

    private mutating func getWhile(_ n: Int, _ allowed: (Unicode.Scalar) -> Bool) -> String {
        var s = ""
        for _ in 0..<n {
            guard let t = peek(), !t.escaped, allowed(t.scalar) else { break }
            s.unicodeScalars.append(t.scalar)
            index += 1
        }
        return s
    }

    private mutating func getUntil(_ terminator: Unicode.Scalar, _ name: String) throws -> String {
        var s = ""
        while true {
            let start = position
            guard let t = get() else {
                if s.isEmpty { throw SyntaxError(message: "missing \(name)", position: start) }
                throw SyntaxError(message: "missing \(terminator), unterminated name", position: start)
            }
            if t.is(terminator) {
                if s.isEmpty { throw SyntaxError(message: "missing \(name)", position: t.position) }
                return s
            }
            s += t.text
        }
    }

    private mutating func markUnsupported(_ construct: String) {
        if unsupported == nil { unsupported = construct }
    }

    private static func isASCIIDigit(_ c: Unicode.Scalar) -> Bool { c.value >= 48 && c.value <= 57 }
    private static func isOctal(_ c: Unicode.Scalar) -> Bool { c.value >= 48 && c.value <= 55 }
    private static func isHex(_ c: Unicode.Scalar) -> Bool {
        isASCIIDigit(c) || (c.value >= 65 && c.value <= 70) || (c.value >= 97 && c.value <= 102)
    }
    private static func isASCIILetter(_ c: Unicode.Scalar) -> Bool {
        (c.value >= 65 && c.value <= 90) || (c.value >= 97 && c.value <= 122)
    }

    /// Python's `str.isidentifier()` (XID_Start or `_`, then XID_Continue).
    private static func isIdentifier(_ s: String) -> Bool {
        guard let first = s.unicodeScalars.first, first == "_" || first.properties.isXIDStart else { return false }
        return s.unicodeScalars.dropFirst().allSatisfy { $0.properties.isXIDContinue }
    }

    // MARK: - Grammar

    /// `_parse_sub`: branches separated by `|`.
    private mutating func parseAlternation(nested: Int) throws -> RegexNode {
        if nested > Self.maxNesting {
            throw SyntaxError(message: "groups nested more than \(Self.maxNesting) deep are not supported", position: tokens[min(index, tokens.count - 1)].position)
        }
        var branches: [RegexNode] = []
        repeat {
            branches.append(try parseSequence(nested: nested + 1, first: nested == 0 && branches.isEmpty))
        } while match("|")
        return branches.count == 1 ? branches[0] : .alternation(branches)
    }

    /// `_parse`: a sequence of items, up to `|`, `)` or the end.
    private mutating func parseSequence(nested: Int, first: Bool) throws -> RegexNode {
        var items: [RegexNode] = []
        var kinds: [ItemKind] = []
        func append(_ n: RegexNode, _ k: ItemKind = .other) {
            items.append(n)
            kinds.append(k)
        }
        while let this = peek(), !this.is("|"), !this.is(")") {
            index += 1
            if this.escaped {
                switch try escape(this) {
                case let .literal(v): append(.set(.literal(v)))
                case let .category(c, n): append(.set(.category(c, negated: n)))
                case let .anchor(a): append(.anchor(a), .anchor)
                case let .node(n): append(n)
                }
                continue
            }
            switch this.scalar {
            case "[":
                append(.set(try parseClass(start: this.position)))
            case "*", "+", "?", "{":
                let here = index
                var lo = 0
                var hi: Int? = nil
                switch this.scalar {
                case "?": hi = 1
                case "+": lo = 1
                case "{":
                    if let n = peek(), n.is("}") {
                        append(.set(.literal(this.scalar.value)))
                        continue
                    }
                    let loText = getWhile(Int.max, Self.isASCIIDigit)
                    var hiText = loText
                    if match(",") { hiText = getWhile(Int.max, Self.isASCIIDigit) }
                    guard match("}") else {
                        index = here
                        append(.set(.literal(this.scalar.value)))
                        continue
                    }
                    if !loText.isEmpty {
                        guard let v = Int(loText), v < Self.maxRepeat else {
                            throw SyntaxError(message: "the repetition number is too large", position: this.position)
                        }
                        lo = v
                    }
                    if !hiText.isEmpty {
                        guard let v = Int(hiText), v < Self.maxRepeat else {
                            throw SyntaxError(message: "the repetition number is too large", position: this.position)
                        }
                        guard v >= lo else {
                            throw SyntaxError(message: "min repeat greater than max repeat", position: this.position + 1)
                        }
                        hi = v
                    }
                default: break
                }
                guard let last = kinds.last, last != .anchor else {
                    throw SyntaxError(message: "nothing to repeat", position: this.position)
                }
                guard last != .repeated else {
                    throw SyntaxError(message: "multiple repeat", position: this.position)
                }
                if !match("?") && match("+") { markUnsupported("possessive quantifier '\(this.scalar == "{" ? "{m,n}" : String(this.scalar))+'") }
                items[items.count - 1] = .repetition(items[items.count - 1], min: lo, max: hi)
                kinds[kinds.count - 1] = .repeated
            case ".":
                append(.set(.dot))
            case "(":
                if let n = try parseGroup(start: this.position, nested: nested, first: first, sequenceIsEmpty: items.isEmpty) {
                    append(n)
                }
            case "^":
                append(.anchor(.start), .anchor)
            case "$":
                append(.anchor(.end), .anchor)
            default:
                append(.set(.literal(this.scalar.value)))
            }
        }
        return items.count == 1 ? items[0] : .sequence(items)
    }

    /// Everything after `(`; nil when the construct adds no item (global flags, a comment).
    private mutating func parseGroup(start: Int, nested: Int, first: Bool, sequenceIsEmpty: Bool) throws -> RegexNode? {
        var capture = true
        var name: String?
        if match("?") {
            guard let char = get() else { throw SyntaxError(message: "unexpected end of pattern", position: end) }
            let c = char.escaped ? nil : char.scalar
            switch c {
            case "P":
                if match("<") {
                    let n = try getUntil(">", "group name")
                    guard Self.isIdentifier(n) else {
                        throw SyntaxError(message: "bad character in group name '\(n)'", position: position - n.unicodeScalars.count - 1)
                    }
                    name = n
                } else if match("=") {
                    let n = try getUntil(")", "group name")
                    guard Self.isIdentifier(n) else {
                        throw SyntaxError(message: "bad character in group name '\(n)'", position: position - n.unicodeScalars.count - 1)
                    }
                    guard let gid = groupNames[n] else {
                        throw SyntaxError(message: "unknown group name '\(n)'", position: position - n.unicodeScalars.count - 1)
                    }
                    try checkReference(gid, at: position - n.unicodeScalars.count - 1)
                    markUnsupported("backreference (?P=\(n))")
                    return .sequence([])
                } else {
                    guard let c2 = get() else { throw SyntaxError(message: "unexpected end of pattern", position: end) }
                    throw SyntaxError(message: "unknown extension ?P\(c2.text)", position: c2.position - 2)
                }
            case ":":
                capture = false
            case "#":
                while true {
                    guard let t = get() else {
                        throw SyntaxError(message: "missing ), unterminated comment", position: start)
                    }
                    if t.is(")") { break }
                }
                markUnsupported("comment (?#...)")
                return nil
            case "=", "!", "<":
                var kind = char.scalar
                var behind = false
                var savedLookbehindGroups = lookbehindGroups
                if kind == "<" {
                    guard let k = get() else { throw SyntaxError(message: "unexpected end of pattern", position: end) }
                    guard k.is("=") || k.is("!") else {
                        throw SyntaxError(message: "unknown extension ?<\(k.text)", position: k.position - 2)
                    }
                    kind = k.scalar
                    behind = true
                    savedLookbehindGroups = lookbehindGroups
                    if lookbehindGroups == nil { lookbehindGroups = groups }
                }
                let sub = try parseAlternation(nested: nested + 1)
                if behind && savedLookbehindGroups == nil { lookbehindGroups = nil }
                guard match(")") else {
                    throw SyntaxError(message: "missing ), unterminated subpattern", position: start)
                }
                if behind { lookbehinds.append((sub, start)) }
                return .look(sub, behind: behind, negated: kind == "!")
            case "(":
                let condition = try getUntil(")", "group name")
                if Self.isIdentifier(condition) {
                    guard let gid = groupNames[condition] else {
                        throw SyntaxError(message: "unknown group name '\(condition)'", position: position)
                    }
                    try checkLookbehindReference(gid)
                } else {
                    guard condition.unicodeScalars.allSatisfy({ $0.properties.numericType == .decimal }),
                          let g = Int(condition) ?? Self.decimalValue(condition)
                    else { throw SyntaxError(message: "bad character in group name '\(condition)'", position: position) }
                    guard g != 0 else { throw SyntaxError(message: "bad group number", position: position) }
                    guard g < 1 << 30 else { throw SyntaxError(message: "invalid group reference \(g)", position: position) }
                    conditionalReferences.append((g, position))
                    try checkLookbehindReference(g)
                }
                _ = try parseSequence(nested: nested + 1, first: false)
                if match("|") {
                    _ = try parseSequence(nested: nested + 1, first: false)
                    if let t = peek(), t.is("|") {
                        throw SyntaxError(message: "conditional backref with more than two branches", position: t.position)
                    }
                }
                guard match(")") else { throw SyntaxError(message: "missing ), unterminated subpattern", position: start) }
                markUnsupported("conditional (?(\(condition))...)")
                return .sequence([])
            case ">":
                capture = false
                markUnsupported("atomic group (?>...)")
            case "a", "i", "L", "m", "s", "x", "t", "u", "-":
                let global = try parseFlags(first: char)
                if global {
                    guard first && sequenceIsEmpty else {
                        throw SyntaxError(message: "global flags not at the start of the expression", position: start)
                    }
                    markUnsupported("inline flags (?\(flagText))")
                    return nil
                }
                markUnsupported("scoped inline flags (?\(flagText):...)")
                capture = false
            default:
                throw SyntaxError(message: "unknown extension ?\(char.text)", position: char.position - 1)
            }
        }
        var gid: Int?
        if capture {
            gid = groups
            if let name {
                if let old = groupNames[name] {
                    throw SyntaxError(message: "redefinition of group name '\(name)' as group \(groups); was group \(old)", position: start)
                }
                groupNames[name] = groups
            }
            groups += 1
        }
        let sub = try parseAlternation(nested: nested + 1)
        guard match(")") else { throw SyntaxError(message: "missing ), unterminated subpattern", position: start) }
        if let gid { closedGroups.insert(gid) }
        return sub
    }

    private var flagText = ""

    /// `_parse_flags`; returns true for global flags `(?aiLmsux)`.
    private mutating func parseFlags(first: Token) throws -> Bool {
        let known: Set<Unicode.Scalar> = ["a", "i", "L", "m", "s", "x", "t", "u"]
        var char = first
        var added = Set<Unicode.Scalar>()
        var removed = Set<Unicode.Scalar>()
        flagText = ""
        if !char.is("-") {
            while true {
                if char.scalar == "L" {
                    throw SyntaxError(message: "bad inline flags: cannot use 'L' flag with a str pattern", position: char.position)
                }
                added.insert(char.scalar)
                flagText.unicodeScalars.append(char.scalar)
                if added.contains("a") && added.contains("u") {
                    throw SyntaxError(message: "bad inline flags: flags 'a', 'u' and 'L' are incompatible", position: char.position)
                }
                guard let next = get() else { throw SyntaxError(message: "missing -, : or )", position: end) }
                char = next
                if char.is(")") || char.is("-") || char.is(":") { break }
                guard !char.escaped, known.contains(char.scalar) else {
                    let alpha = !char.escaped && char.scalar.properties.isAlphabetic
                    throw SyntaxError(message: alpha ? "unknown flag" : "missing -, : or )", position: char.position)
                }
            }
        }
        if char.is(")") { return true }
        if added.contains("t") { throw SyntaxError(message: "bad inline flags: cannot turn on global flag", position: char.position) }
        if char.is("-") {
            guard let next = get() else { throw SyntaxError(message: "missing flag", position: end) }
            char = next
            guard !char.escaped, known.contains(char.scalar) else {
                let alpha = !char.escaped && char.scalar.properties.isAlphabetic
                throw SyntaxError(message: alpha ? "unknown flag" : "missing flag", position: char.position)
            }
            flagText += "-"
            while true {
                if ["a", "u", "L"].contains(char.scalar) {
                    throw SyntaxError(message: "bad inline flags: cannot turn off flags 'a', 'u' and 'L'", position: char.position)
                }
                removed.insert(char.scalar)
                flagText.unicodeScalars.append(char.scalar)
                guard let next = get() else { throw SyntaxError(message: "missing :", position: end) }
                char = next
                if char.is(":") { break }
                guard !char.escaped, known.contains(char.scalar) else {
                    let alpha = !char.escaped && char.scalar.properties.isAlphabetic
                    throw SyntaxError(message: alpha ? "unknown flag" : "missing :", position: char.position)
                }
            }
        }
        if removed.contains("t") { throw SyntaxError(message: "bad inline flags: cannot turn off global flag", position: char.position) }
        if !added.isDisjoint(with: removed) {
            throw SyntaxError(message: "bad inline flags: flag turned on and off", position: char.position)
        }
        return false
    }

    private static func decimalValue(_ s: String) -> Int? {
        var v = 0
        for u in s.unicodeScalars {
            guard let d = u.properties.numericValue, d >= 0, d <= 9 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int(d))
            if o1 || o2 { return nil }
            v = a
        }
        return v
    }

    private func checkReference(_ gid: Int, at pos: Int) throws {
        guard closedGroups.contains(gid) else { throw SyntaxError(message: "cannot refer to an open group", position: pos) }
        try checkLookbehindReference(gid, at: pos)
    }

    private func checkLookbehindReference(_ gid: Int, at pos: Int? = nil) throws {
        guard let lb = lookbehindGroups else { return }
        guard gid < groups, closedGroups.contains(gid) else {
            throw SyntaxError(message: "cannot refer to an open group", position: pos ?? position)
        }
        if gid >= lb {
            throw SyntaxError(message: "cannot refer to group defined in the same lookbehind subpattern", position: pos ?? position)
        }
    }

    // MARK: - Escapes and classes

    /// `_escape`: an escape outside a class.
    private mutating func escape(_ t: Token) throws -> Code {
        let c = t.scalar
        switch c {
        case "A": return .anchor(.start)
        case "Z": return .anchor(.endOfString)
        case "b": return .anchor(.wordBoundary)
        case "B": return .anchor(.notWordBoundary)
        case "d", "D": return .category(.digit, negated: c == "D")
        case "w", "W": return .category(.word, negated: c == "W")
        case "s", "S": return .category(.space, negated: c == "S")
        case "0":
            let digits = getWhile(2, Self.isOctal)
            return .literal(UInt32(digits, radix: 8) ?? 0)
        case "1"..."9":
            var text = String(c)
            if let n = peek(), !n.escaped, Self.isASCIIDigit(n.scalar) {
                index += 1
                text.unicodeScalars.append(n.scalar)
                if Self.isOctal(c), Self.isOctal(n.scalar), let n2 = peek(), !n2.escaped, Self.isOctal(n2.scalar) {
                    index += 1
                    text.unicodeScalars.append(n2.scalar)
                    let v = UInt32(text, radix: 8) ?? 0
                    guard v <= 0o377 else {
                        throw SyntaxError(message: "octal escape value \\\(text) outside of range 0-0o377", position: t.position)
                    }
                    return .literal(v)
                }
            }
            let group = Int(text) ?? 0
            guard group < groups else {
                throw SyntaxError(message: "invalid group reference \(group)", position: t.position + 1)
            }
            try checkReference(group, at: t.position)
            markUnsupported("backreference \\\(text)")
            return .node(.sequence([]))
        default:
            return try commonEscape(t)
        }
    }

    /// `_class_escape`: an escape inside `[...]`.
    private mutating func classEscape(_ t: Token) throws -> Code {
        let c = t.scalar
        switch c {
        case "b": return .literal(8)
        case "d", "D": return .category(.digit, negated: c == "D")
        case "w", "W": return .category(.word, negated: c == "W")
        case "s", "S": return .category(.space, negated: c == "S")
        case "0"..."7":
            let text = String(c) + getWhile(2, Self.isOctal)
            let v = UInt32(text, radix: 8) ?? 0
            guard v <= 0o377 else {
                throw SyntaxError(message: "octal escape value \\\(text) outside of range 0-0o377", position: t.position)
            }
            return .literal(v)
        case "8", "9":
            throw SyntaxError(message: "bad escape \\\(c)", position: t.position)
        default:
            return try commonEscape(t)
        }
    }

    /// The escapes shared by both contexts: `\a \f \n \r \t \v \\`, `\x \u \U \N`, other non-letters.
    private mutating func commonEscape(_ t: Token) throws -> Code {
        let c = t.scalar
        switch c {
        case "a": return .literal(7)
        case "f": return .literal(12)
        case "n": return .literal(10)
        case "r": return .literal(13)
        case "t": return .literal(9)
        case "v": return .literal(11)
        case "x", "u", "U":
            let count = c == "x" ? 2 : c == "u" ? 4 : 8
            let digits = getWhile(count, Self.isHex)
            guard digits.unicodeScalars.count == count else {
                throw SyntaxError(message: "incomplete escape \\\(c)\(digits)", position: t.position)
            }
            let v = UInt32(digits, radix: 16) ?? UInt32.max
            guard v <= 0x10FFFF else { throw SyntaxError(message: "bad escape \\\(c)\(digits)", position: t.position) }
            return .literal(v)
        case "N":
            guard match("{") else { throw SyntaxError(message: "missing {", position: position) }
            let name = try getUntil("}", "character name")
            markUnsupported("named character \\N{\(name)}")
            return .node(.sequence([]))
        default:
            if Self.isASCIILetter(c) { throw SyntaxError(message: "bad escape \\\(c)", position: t.position) }
            return .literal(c.value)
        }
    }

    /// A class after its `[`.
    private mutating func parseClass(start: Int) throws -> RegexScalarSet {
        var set = RegexScalarSet()
        set.negated = match("^")
        var count = 0
        func add(_ code: Code) {
            switch code {
            case let .literal(v): set.ranges.append(v...v)
            case let .category(c, n): set.categories.append((c, n))
            case .anchor, .node: break
            }
            count += 1
        }
        while true {
            guard let this = get() else { throw SyntaxError(message: "unterminated character set", position: start) }
            if this.is("]") && count > 0 { break }
            let code1 = this.escaped ? try classEscape(this) : .literal(this.scalar.value)
            if match("-") {
                guard let that = get() else { throw SyntaxError(message: "unterminated character set", position: start) }
                if that.is("]") {
                    add(code1)
                    add(.literal(45))
                    break
                }
                let code2 = that.escaped ? try classEscape(that) : .literal(that.scalar.value)
                guard case let .literal(lo) = code1, case let .literal(hi) = code2, lo <= hi else {
                    throw SyntaxError(message: "bad character range \(this.text)-\(that.text)", position: this.position)
                }
                set.ranges.append(lo...hi)
                count += 1
            } else {
                add(code1)
            }
        }
        return set
    }
}
