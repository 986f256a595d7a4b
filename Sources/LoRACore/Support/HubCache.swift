import Foundation
import SafeTensors

/// Model and adapter names resolved offline through the local Hugging Face hub cache.
///
/// A `--base` or `--adapter` that is not an existing path but reads as a hub id (`org/name`,
/// optionally `org/name@REVISION`) is looked up in `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`, in the cache's own layout:
/// `models--org--name/refs/REVISION` holds a commit hash, and `models--org--name/snapshots/HASH/`
/// is the model directory (its files are relative links into `../../blobs/`). REVISION defaults to
/// `main`; a commit hash present under `snapshots/` is accepted as is. Nothing is ever downloaded.
public enum HubCache {
    /// Where a model spec points, and how it got there (nil for a plain local path).
    public struct Resolution: Sendable, Equatable {
        public var path: String
        public var note: String?
    }

    /// The cache directory in use for `environment`.
    public static func root(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let cache = environment["HF_HUB_CACHE"], !cache.isEmpty { return cache }
        if let home = environment["HF_HOME"], !home.isEmpty { return home + "/hub" }
        return (environment["HOME"] ?? NSHomeDirectory()) + "/.cache/huggingface/hub"
    }

    /// Resolves `spec`: an existing path as is, else a hub id from the cache.
    /// - Parameter revision: the revision when `spec` names none (`@REV`); default `main`.
    /// - Throws: `SafeTensorsError.unsupportedInput` naming what was looked at when `spec` is neither
    ///   an existing path nor a cached hub id.
    public static func resolve(_ spec: String, revision: String? = nil,
                               environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Resolution {
        if FileManager.default.fileExists(atPath: spec) { return Resolution(path: spec, note: nil) }
        guard let (id, named) = hubID(spec) else {
            throw SafeTensorsError.unsupportedInput(path: spec, detail: "no such file or directory")
        }
        let rev = named ?? revision ?? "main"
        let repo = root(environment) + "/models--" + id.replacingOccurrences(of: "/", with: "--")
        guard FileManager.default.fileExists(atPath: repo) else {
            throw SafeTensorsError.unsupportedInput(
                path: spec, detail: "not a local path, and not in the Hugging Face cache (looked for \(repo)); lora-tool never downloads: fetch it first, e.g. `huggingface-cli download \(id)`")
        }
        var commit = rev
        let ref = repo + "/refs/" + rev
        if !rev.contains("/"), !rev.contains(".."), FileManager.default.fileExists(atPath: ref) {
            let text = String(decoding: try RegularFile.readAll(ref, limit: 4096), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !text.isEmpty, text.allSatisfy({ $0.isHexDigit }) else {
                throw SafeTensorsError.unsupportedInput(path: ref, detail: "does not hold a commit hash")
            }
            commit = text
        }
        let snapshot = repo + "/snapshots/" + commit
        guard !commit.contains("/"), !commit.contains(".."), FileManager.default.fileExists(atPath: snapshot) else {
            throw SafeTensorsError.unsupportedInput(
                path: spec, detail: "revision '\(rev)' is not in the Hugging Face cache (looked at \(ref) and \(snapshot))")
        }
        let shown = commit == rev ? rev : "\(rev) = \(commit.prefix(12))"
        return Resolution(path: snapshot, note: "\(spec): the Hugging Face cache's \(id) (\(shown)) at \(snapshot)")
    }

    /// The base model an adapter names in adapter_config.json's `base_model_name_or_path`, resolved.
    /// - Throws: `LoRACoreError.invalidRequest` when the adapter names none, or it cannot be found
    ///   locally (the message says what was looked at and to give `--base`).
    public static func base(ofAdapter adapter: String, revision: String? = nil,
                            environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Resolution {
        var isDir: ObjCBool = false
        let dir = FileManager.default.fileExists(atPath: adapter, isDirectory: &isDir) && isDir.boolValue
            ? adapter : (adapter as NSString).deletingLastPathComponent
        let config = (dir.isEmpty ? "." : dir) + "/adapter_config.json"
        guard let root = try SideFiles.readJSON(config), let name = root["base_model_name_or_path"]?.stringValue, !name.isEmpty else {
            throw LoRACoreError.invalidRequest("give --base: \(config) names no base_model_name_or_path")
        }
        do {
            var resolved = try resolve(name, revision: root["revision"]?.stringValue ?? revision, environment: environment)
            resolved.note = "base taken from \(config) (base_model_name_or_path \(name))" + (resolved.note.map { "; " + $0 } ?? ": \(name)")
            return resolved
        } catch let error as SafeTensorsError {
            throw LoRACoreError.invalidRequest("give --base: \(config) names base_model_name_or_path '\(name)', which is not available offline (\(error.localizedDescription))")
        }
    }

    /// `org/name` or `org/name@rev` with the hub's id characters, else nil.
    static func hubID(_ spec: String) -> (String, String?)? {
        let parts = spec.split(separator: "@", maxSplits: 1, omittingEmptySubsequences: false)
        let id = String(parts[0])
        let revision = parts.count == 2 ? String(parts[1]) : nil
        if let revision, revision.isEmpty { return nil }
        let pieces = id.split(separator: "/", omittingEmptySubsequences: false)
        guard pieces.count == 2 else { return nil }
        for piece in pieces {
            guard let first = piece.first, first != ".", first != "-",
                  piece.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }), !piece.contains("..") else { return nil }
        }
        return (id, revision)
    }
}
