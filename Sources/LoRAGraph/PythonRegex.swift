/// A pattern read exactly as Python's `re` reads a `str` pattern (Python 3.11 rules), answering only
/// whether a match exists — in time linear in the text length for a given pattern.
///
/// **Supported subset** (Python semantics throughout):
/// - literals and escapes Python accepts (`\.` `\\` `\-` `\n` `\t` `\x41` `\u00e9` `\0` octal …; an
///   unknown ASCII-letter escape such as `\q` is an error, as in Python);
/// - `.` (any scalar but `\n`); classes `[...]` with ranges, `^` negation, escapes, `]` first being a
///   literal, `[` inside being a literal (so `[[:alpha:]]` is the set `[:alph` followed by `]`), `-` first
///   or last being a literal;
/// - `\d \D \w \W \s \S` with Python's Unicode meanings (see `RegexScalarSet`);
/// - groups `(...)`, `(?:...)`, `(?P<name>...)`, alternation, quantifiers `* + ? {m} {m,} {,n} {m,n}` and
///   their lazy forms (a `{` that is not a valid quantifier is a literal);
/// - anchors `^ $ \A \Z \b \B` (`$` also matches before a final `\n`);
/// - lookahead `(?=...)` `(?!...)` and fixed-width lookbehind `(?<=...)` `(?<!...)`.
///
/// Refused with `GraphError.unsupportedPattern` (naming the construct): inline flags, backreferences,
/// conditionals, atomic groups, possessive quantifiers, comments `(?#...)`, `\N{...}`, groups nested more
/// than 200 deep, and patterns whose program (counted repetitions expanded) exceeds `maxProgramSize`
/// instructions. What Python itself rejects throws `GraphError.invalidPattern` with Python's message.
///
/// **Time bound.** Compiling is linear in the program size (at most `maxProgramSize`). Matching a text of
/// n scalars costs O(n × program size) including all lookarounds: a Thompson-NFA simulation, never
/// backtracking, so catastrophic patterns such as `(.*.*)*X` are as fast as plain ones.
/// Text is read as Unicode scalars, as Python indexes `str`.
public struct PythonRegex: Sendable {
    /// The most NFA instructions a pattern may compile to (main program and all lookarounds).
    public static let maxProgramSize = 20_000

    /// The pattern as given.
    public let pattern: String
    /// Python's `getwidth()` of the pattern: every match has length `width.min...width.max` (nil: unbounded).
    public let width: (min: Int, max: Int?)
    /// Whether the pattern's top level is an alternation `a|b` (it then changes meaning when pasted into
    /// a larger pattern).
    public let isTopLevelAlternation: Bool
    private let program: RegexProgram
    private let looks: [RegexProgram.Look]

    /// Parses and compiles `pattern`.
    /// - Throws: `GraphError.invalidPattern` (Python rejects it) or `.unsupportedPattern` (outside the
    ///   subset above), both naming `pattern`.
    public init(_ pattern: String) throws {
        try self.init(pattern, reportedAs: pattern, offset: 0)
    }

    /// Compiles `source` but names `reportedAs` in errors, with positions shifted back by `offset`: for a
    /// pattern PEFT pastes as text into a larger one (`source` is the larger one, `offset` where it starts).
    /// - Throws: as `init(_:)`.
    public init(_ source: String, reportedAs: String, offset: Int) throws {
        pattern = source
        let parsed: (node: RegexNode, unsupported: String?)
        do {
            parsed = try PythonRegexParser.parse(source)
        } catch let e as PythonRegexParser.SyntaxError {
            let pos = e.position - offset
            let at = pos >= 0 && pos <= reportedAs.unicodeScalars.count ? " at position \(pos)" : ""
            throw GraphError.invalidPattern(reportedAs, detail: "\(e.message)\(at) (Python's re rejects it)")
        }
        if let construct = parsed.unsupported {
            throw GraphError.unsupportedPattern(reportedAs, construct: construct)
        }
        let size = RegexProgram.size(of: parsed.node)
        guard size <= Self.maxProgramSize else {
            throw GraphError.unsupportedPattern(
                reportedAs, construct: "a pattern expanding to more than \(Self.maxProgramSize) NFA states (counted repetitions)")
        }
        var looks: [RegexProgram.Look] = []
        program = RegexProgram.compile(parsed.node, reversed: false, looks: &looks)
        self.looks = looks
        width = parsed.node.width
        if case .alternation = parsed.node { isTopLevelAlternation = true } else { isTopLevelAlternation = false }
    }

    /// Python's `re.fullmatch(pattern, text) is not None`.
    public func fullMatch(_ text: String) -> Bool {
        let t = Array(text.unicodeScalars)
        return program.run(t, lookResults: lookResults(t), forward: true, start: 0)[t.count]
    }

    /// `fullMatch`, with the instructions the simulation visited (lookarounds included) and the
    /// bound it can never exceed: (text length + 1) × the instructions of every program run.
    func fullMatchWork(_ text: String) -> (matched: Bool, visits: Int, bound: Int) {
        let t = Array(text.unicodeScalars)
        var visits = 0
        var results: [[Bool]] = []
        for look in looks {
            results.append(look.program.run(t, lookResults: results, forward: look.behind, start: nil, visits: &visits))
        }
        let matched = program.run(t, lookResults: results, forward: true, start: 0, visits: &visits)[t.count]
        let instructions = program.instructions.count + looks.reduce(0) { $0 + $1.program.instructions.count }
        return (matched, visits, (t.count + 1) * instructions)
    }

    /// Python's `re.match(pattern, text) is not None`: a match starting at the beginning, ending anywhere.
    public func prefixMatch(_ text: String) -> Bool {
        let t = Array(text.unicodeScalars)
        return program.run(t, lookResults: lookResults(t), forward: true, start: 0, stopAtFirst: true).contains(true)
    }

    /// The end positions of matches starting at scalar offset `start` of `text`.
    /// - Returns: `result[e]` is true when the pattern matches `text[start..<e]` (context: all of `text`).
    public func matchEnds(in text: [Unicode.Scalar], from start: Int) -> [Bool] {
        program.run(text, lookResults: lookResults(text), forward: true, start: start)
    }

    /// Python's `\d` for `str` patterns (`str.isdecimal()`).
    public static func isDecimalDigit(_ s: Unicode.Scalar) -> Bool { RegexScalarSet.isDigit(s) }

    private func lookResults(_ text: [Unicode.Scalar]) -> [[Bool]] {
        var results: [[Bool]] = []
        results.reserveCapacity(looks.count)
        for look in looks {
            results.append(look.program.run(text, lookResults: results, forward: look.behind, start: nil))
        }
        return results
    }
}
