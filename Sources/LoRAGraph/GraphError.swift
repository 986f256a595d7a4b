import Foundation

/// Errors from parsing names and target specifications.
public enum GraphError: Error, Equatable, Sendable {
    /// A `--targets` entry or config pattern that is empty or not a valid regular expression.
    case invalidPattern(String, detail: String)
}

extension GraphError: LocalizedError {
    public var errorDescription: String? {
        switch self {
        case let .invalidPattern(p, detail): return "invalid module pattern '\(p)': \(detail)"
        }
    }
}
