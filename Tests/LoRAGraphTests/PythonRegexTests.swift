import Foundation
import Testing
@testable import LoRAGraph

/// Python's answers, written by scripts/make-regex-table.py (run with the real python3; committed).
struct PythonReTable: Decodable, Sendable {
    /// `answers` ("1"/"0" per name) or Python's error message.
    struct Outcome: Decodable, Sendable {
        var answers: String?
        var error: String?
    }

    /// A long name written as unit × count + tail.
    struct LongName: Decodable, Sendable {
        var text: String
        init(from decoder: Decoder) throws {
            var c = try decoder.unkeyedContainer()
            let unit = try c.decode(String.self)
            let count = try c.decode(Int.self)
            text = String(repeating: unit, count: count) + (try c.decode(String.self))
        }
    }

    struct Case: Decodable, Sendable, CustomTestStringConvertible {
        var pattern: String
        var names: [String]?
        var longNames: [LongName]?
        var fullmatch: Outcome
        var suffix: Outcome
        var testDescription: String { pattern.debugDescription + (longNames != nil ? " (long names)" : "") }
        enum CodingKeys: String, CodingKey {
            case pattern, names, fullmatch, suffix
            case longNames = "long_names"
        }
    }

    struct Unsupported: Decodable, Sendable, CustomTestStringConvertible {
        var pattern: String
        var construct: String
        var suffixPythonError: String?
        var testDescription: String { pattern.debugDescription }
        enum CodingKeys: String, CodingKey {
            case pattern, construct
            case suffixPythonError = "suffix_python_error"
        }
    }

    var python: String
    var names: [String]
    var cases: [Case]
    var unsupported: [Unsupported]

    static let shared: PythonReTable = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/python-re-table.json")
        do {
            return try JSONDecoder().decode(PythonReTable.self, from: Data(contentsOf: url))
        } catch {
            fatalError("cannot read \(url.path): \(error)")  // a test fixture, not input
        }
    }()
}

@Suite("Python re semantics")
struct PythonRegexTests {
    /// Invalid alone, but pasted after "(.*\.)?(" their "\1" refers to that closed group: Python accepts
    /// them as backreferences, which are refused (by name) rather than matched.
    static let backreferencesOnlyUnderSuffixRule: Set = ["\\1(a)", "(a\\1)"]

    @Test("Every answer equals Python's re.fullmatch and PEFT's re.match((.*\\.)?(p)$) from the table",
          arguments: PythonReTable.shared.cases)
    func agreesWithPython(_ c: PythonReTable.Case) throws {
        let names = c.names ?? c.longNames?.map(\.text) ?? PythonReTable.shared.names
        for (suffixRule, outcome) in [(false, c.fullmatch), (true, c.suffix)] {
            let rule = suffixRule ? "suffix rule" : "fullmatch"
            if let pythonError = outcome.error {
                #expect(throws: GraphError.self, "\(rule): Python rejects it (\(pythonError))") {
                    try PatternMatcher(c.pattern, suffixRule: suffixRule)
                }
                if !suffixRule {
                    do {
                        _ = try PythonRegex(c.pattern)
                    } catch let GraphError.invalidPattern(p, _) {
                        #expect(p == c.pattern)
                    } catch {
                        Issue.record("Python rejects \(c.pattern.debugDescription) (\(pythonError)) but the error is \(error)")
                    }
                }
                continue
            }
            let answers = Array(outcome.answers ?? "")
            try #require(answers.count == names.count)
            if suffixRule && Self.backreferencesOnlyUnderSuffixRule.contains(c.pattern) {
                #expect(throws: GraphError.unsupportedPattern(c.pattern, construct: "backreference \\1")) {
                    try PatternMatcher(c.pattern, suffixRule: true)
                }
                continue
            }
            let m = try PatternMatcher(c.pattern, suffixRule: suffixRule)
            for (name, expected) in zip(names, answers) {
                let shown = name.count > 40 ? "\(name.prefix(12).debugDescription)…(\(name.unicodeScalars.count) scalars)" : name.debugDescription
                #expect(m.matches(name) == (expected == "1"), "\(rule) on \(shown): Python says \(expected == "1")")
            }
        }
    }

    @Test("Constructs outside the subset are refused by name, never matched differently",
          arguments: PythonReTable.shared.unsupported)
    func refusesUnsupported(_ u: PythonReTable.Unsupported) {
        do {
            _ = try PatternMatcher(u.pattern, suffixRule: false)
            Issue.record("\(u.pattern.debugDescription) compiled")
        } catch let GraphError.unsupportedPattern(p, construct) {
            #expect(p == u.pattern)
            #expect(construct.contains(u.construct), "construct named: \(construct)")
        } catch {
            Issue.record("unexpected \(error)")
        }
        // Under the suffix rule it is refused too (as invalid when Python rejects the pasted pattern).
        #expect(throws: GraphError.self) { try PatternMatcher(u.pattern, suffixRule: true) }
    }

    @Test("Hostile patterns do linear work: at most one visit per instruction and text position (counted, not timed)", arguments: [
        "(.*.*)*X", "(a|a)*b", "(a*)*b", "(a+)+b", "(\\w*)*X", "((a?){20}a{20})*c", "(?=(a*)*b)(a|a)*c", ".*(?<=(a|a)(a|a))*X",
    ])
    func hostileIsLinear(pattern: String) throws {
        let regex = try PythonRegex(pattern)
        for length in [1_000, 20_000] {
            let work = regex.fullMatchWork(String(repeating: "a", count: length))
            #expect(!work.matched)
            // The bound is linear in the text: a backtracking matcher would need exponentially many steps.
            #expect(work.visits > 0 && work.visits <= work.bound, "\(pattern): \(work.visits) visits over the bound \(work.bound)")
        }
        for suffixRule in [false, true] {
            #expect(try !PatternMatcher(pattern, suffixRule: suffixRule).matches(String(repeating: "a", count: 20_000)))
        }
    }

    @Test("Counted repetitions that expand too far are refused before any expansion",
          arguments: ["a{100000}", "(a{1000}){1000}", "((((a{1000}){1000}){1000}){1000}){1000}", "(?=a{30000})"])
    func refusesHugePrograms(pattern: String) {
        #expect(throws: GraphError.unsupportedPattern(
            pattern, construct: "a pattern expanding to more than \(PythonRegex.maxProgramSize) NFA states (counted repetitions)")) {
            try PythonRegex(pattern)
        }
    }

    @Test("Errors under the suffix rule name the key as written, with its own positions")
    func suffixRuleErrorsNameTheKey() {
        #expect(throws: GraphError.invalidPattern("a\\q", detail: "bad escape \\q at position 1 (Python's re rejects it)")) {
            try PatternMatcher("a\\q", suffixRule: true)
        }
        // Pasted after "(.*\.)?(", the key's (a) is group 3: "\3" is a valid (unsupported) backreference...
        #expect(throws: GraphError.unsupportedPattern("(a)\\3", construct: "backreference \\3")) {
            try PatternMatcher("(a)\\3", suffixRule: true)
        }
        // ...and "\2" refers to the still-open group around the key, which Python rejects.
        #expect(throws: GraphError.invalidPattern("(a)\\2", detail: "cannot refer to an open group at position 3 (Python's re rejects it)")) {
            try PatternMatcher("(a)\\2", suffixRule: true)
        }
    }

    @Test("Lookbehind alpha keys select only the modules Python selects")
    func lookbehind() throws {
        let m = try PatternMatcher("(?<=self_attn\\.)q_proj", suffixRule: true)
        #expect(m.matches("model.layers.0.self_attn.q_proj"))
        #expect(!m.matches("model.layers.0.cross_attn.q_proj"))
        #expect(!m.matches("q_proj"))
    }
}
