import Foundation

/// Errors from parsing names and target specifications.
public enum GraphError: Error, Equatable, Sendable {
    /// A `--targets` entry or config pattern that is empty, or a regular expression Python's `re` rejects
    /// (the detail is Python's message).
    case invalidPattern(String, detail: String)
    /// A regular expression Python accepts but lora-tool does not implement (`construct` names it, e.g.
    /// "backreference \1"), refused rather than matched differently.
    case unsupportedPattern(String, construct: String)
}

extension GraphError: LocalizedError {
    public var errorDescription: String? {
        switch self {
        case let .invalidPattern(p, detail): return "invalid module pattern '\(p)': \(detail)"
        case let .unsupportedPattern(p, construct):
            return "module pattern '\(p)' uses \(construct), which lora-tool does not support"
        }
    }
}
