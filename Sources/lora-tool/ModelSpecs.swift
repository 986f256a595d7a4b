import Foundation
import LoRACore

/// Model and adapter arguments as users give them: paths, or hub ids found offline in the local
/// Hugging Face cache (`HubCache`). Each resolution that was not a plain path is said on stderr.
enum ModelSpecs {
    /// The local path for `spec`.
    static func resolve(_ spec: String, revision: String? = nil) throws -> String {
        let r = try HubCache.resolve(spec, revision: revision)
        if let note = r.note { say(note) }
        return r.path
    }

    /// `--base` resolved, or when it was omitted, the base the first adapter's config names.
    static func base(_ base: String?, adapter: String, revision: String?) throws -> String {
        if let base { return try resolve(base, revision: revision) }
        let r = try HubCache.base(ofAdapter: adapter, revision: revision)
        if let note = r.note { say(note) }
        return r.path
    }

    private static func say(_ note: String) {
        Render.diagnostic("note: " + note)
    }
}
