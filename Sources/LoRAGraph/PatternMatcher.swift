/// PEFT's regex matching for `rank_pattern` / `alpha_pattern` keys and string `target_modules`, with
/// Python's `re` semantics (see `PythonRegex` for the supported subset and the linear-time bound).
///
/// PEFT 0.21.2 (`peft/utils/other.py`):
/// - `get_pattern_key`: a rank/alpha key matches when `re.match(rf"(.*\.)?({key})$", module)` succeeds,
///   so the key must match a dot-boundary suffix or the whole name (`$` also before a final `\n`). The
///   key is pasted into that pattern as text, exactly as Python does, then compiled.
/// - `match_target_against_key`: a string `target_modules` matches when `re.fullmatch(pattern, module)`.
public struct PatternMatcher: Sendable {
    /// The pattern as written in the config.
    public let pattern: String
    /// Whether this is the rank/alpha key rule (else fullmatch).
    public let suffixRule: Bool
    private let regex: PythonRegex

    /// Compiles `pattern` under one of PEFT's rules.
    /// - Parameter suffixRule: true for the rank/alpha pattern rule, false for fullmatch.
    /// - Throws: `GraphError.invalidPattern` when Python's `re` rejects it, `.unsupportedPattern` when it
    ///   uses a construct outside the supported subset; both name `pattern`.
    public init(_ pattern: String, suffixRule: Bool) throws {
        self.pattern = pattern
        self.suffixRule = suffixRule
        if suffixRule {
            let prefix = #"(.*\.)?("#
            regex = try PythonRegex(prefix + pattern + ")$", reportedAs: pattern, offset: prefix.unicodeScalars.count)
        } else {
            regex = try PythonRegex(pattern)
        }
    }

    /// Whether PEFT's rule selects `module`.
    public func matches(_ module: String) -> Bool {
        suffixRule ? regex.prefixMatch(module) : regex.fullMatch(module)
    }
}
