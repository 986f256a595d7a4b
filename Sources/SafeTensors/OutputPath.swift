import Foundation

/// The rules an output path must pass before anything is written: paths that are blank, or that
/// name a directory a user cannot mean to replace, are refused outright (a usage error, whatever
/// `--force` says), because a script that passes `--output "$UNSET"` must never reach the file system.
public enum OutputPath {
    /// - Throws: `SafeTensorsError.unsafeOutput` when `path` is empty or blank, is `.`, `..`, `/`,
    ///   ends in a `.` or `..` component, is the home directory, or is an existing directory that
    ///   is the working directory or one of its ancestors.
    public static func validate(_ path: String) throws {
        let shown = path.debugDescription
        if path.allSatisfy({ $0.isWhitespace }) {
            throw SafeTensorsError.unsafeOutput(path: shown, detail: "the output path is empty or blank")
        }
        var trimmed = Substring(path)
        while trimmed.count > 1, trimmed.hasSuffix("/") { trimmed = trimmed.dropLast() }
        let last = trimmed.split(separator: "/", omittingEmptySubsequences: true).last.map(String.init) ?? "/"
        if last == "." || last == ".." || trimmed == "/" {
            throw SafeTensorsError.unsafeOutput(path: shown, detail: "'\(last)' cannot be an output: name a new directory or file")
        }
        let resolved = realPath(path)
        if resolved == "/" {
            throw SafeTensorsError.unsafeOutput(path: shown, detail: "the root directory cannot be an output")
        }
        if let home = ProcessInfo.processInfo.environment["HOME"], !home.isEmpty, resolved == realPath(home) {
            throw SafeTensorsError.unsafeOutput(path: shown, detail: "the home directory cannot be an output")
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            let cwd = realPath(FileManager.default.currentDirectoryPath)
            if cwd == resolved || cwd.hasPrefix(resolved + "/") {
                throw SafeTensorsError.unsafeOutput(path: shown, detail: "the working directory or one of its ancestors cannot be an output")
            }
        }
    }

    /// Absolute path with symlinks resolved for the part that exists (the rest appended as given):
    /// how outputs are compared with inputs and with the working and home directories.
    public static func realPath(_ path: String) -> String {
        var url = URL(fileURLWithPath: path).standardizedFileURL
        var tail: [String] = []
        while url.path != "/", !FileManager.default.fileExists(atPath: url.path) {
            tail.insert(url.lastPathComponent, at: 0)
            url.deleteLastPathComponent()
        }
        var resolved = url.path
        if let r = realpath(url.path, nil) {
            resolved = String(cString: r)
            free(r)
        }
        for t in tail { resolved = resolved == "/" ? "/" + t : resolved + "/" + t }
        return resolved
    }
}
