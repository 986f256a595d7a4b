/// PEFT's regex matching for `rank_pattern` / `alpha_pattern` keys and string `target_modules`.
///
/// `rank_pattern` keys match as Python's `re.match(rf"(.*\.)?({key})$", module)`: the key must match a
/// dot-boundary suffix or the whole module name. A string `target_modules` matches as `re.fullmatch`.
public struct PatternMatcher: @unchecked Sendable {
    // @unchecked: Regex is immutable after init and only used for matching.
    public let pattern: String
    private let regex: Regex<AnyRegexOutput>

    /// Compiles `pattern`.
    /// - Parameter suffixRule: true for the rank/alpha pattern rule, false for fullmatch.
    /// - Throws: `GraphError.invalidPattern` when the regex does not compile.
    public init(_ pattern: String, suffixRule: Bool) throws {
        self.pattern = pattern
        do {
            regex = try Regex(suffixRule ? "(?:.*\\.)?(?:\(pattern))" : "(?:\(pattern))")
        } catch {
            throw GraphError.invalidPattern(pattern, detail: "\(error)")
        }
    }

    /// Whether the whole of `module` matches.
    public func matches(_ module: String) -> Bool {
        (try? regex.wholeMatch(in: module)) != nil
    }
}
