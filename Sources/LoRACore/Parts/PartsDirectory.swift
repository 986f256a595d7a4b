import Foundation
import SafeTensors

/// Where the parts of a partitioned merge wait for `Assemble`: the hidden directory
/// `.NAME.lora-tool-parts` beside the output `NAME`, holding one committed directory per part
/// (`part-00002-of-00007`: an `AtomicOutput` directory with its marker and `part.json`), so a part
/// is either wholly there or absent, and re-running it replaces only its own directory.
public struct PartsDirectory: Sendable {
    /// The final output the parts are assembled into.
    public let output: String
    public let path: String

    public init(output: String) {
        let url = URL(fileURLWithPath: output)
        let parent = url.deletingLastPathComponent().path
        path = parent + "/." + url.lastPathComponent + ".lora-tool-parts"
        self.output = output
    }

    /// The committed directory of `part`.
    public func path(for part: PartSelection) -> String {
        path + "/" + PartsDirectory.name(of: part)
    }

    static func name(of part: PartSelection) -> String {
        String(format: "part-%05d-of-%05d", part.index, part.count)
    }

    /// Checks, before a part does any work, that the final output may be written at assembly
    /// (it does not exist, or is an empty directory, or `force` is given: `AtomicOutput` then
    /// decides at assembly whether it is lora-tool's to replace), and creates the parts directory.
    /// - Throws: `SafeTensorsError.outputExists`; `.outputIO` when the directory cannot be created
    ///   or its name is taken by something that is not a directory.
    public func prepare(force: Bool) throws {
        var st = stat()
        if !force, lstat(output, &st) == 0 {
            let empty = (st.st_mode & S_IFMT) == S_IFDIR && ((try? FileManager.default.contentsOfDirectory(atPath: output)) ?? ["?"]).isEmpty
            if !empty { throw SafeTensorsError.outputExists(path: output, detail: "exists; give --force to replace it when the parts are assembled (only an output lora-tool wrote is ever replaced)") }
        }
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw SafeTensorsError.outputIO(path: path, operation: "create", errno: errno)
        }
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw SafeTensorsError.outputIO(path: path, operation: "create (the name is taken by something that is not a directory)", errno: EEXIST)
        }
    }

    /// The committed parts found, by name; hidden entries (parts still being written) are skipped.
    /// - Throws: `LoRACoreError.invalidRequest` when there is no parts directory, or it holds
    ///   anything that is not a part directory (lora-tool did not put it there).
    public func committedParts() throws -> [(name: String, path: String)] {
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
            throw LoRACoreError.invalidRequest("\(output): no parts to assemble (\(path) does not exist; run the parts with --part I/N first)")
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: path).filter { !$0.hasPrefix(".") }.sorted()
        if let foreign = names.first(where: { !PartsDirectory.isPartName($0) }) {
            throw LoRACoreError.invalidRequest("\(path): '\(foreign)' is not a part lora-tool wrote; nothing was assembled")
        }
        return names.map { ($0, path + "/" + $0) }
    }

    static func isPartName(_ name: String) -> Bool {
        let u = Array(name.utf8)
        guard u.count == 19, name.hasPrefix("part-"), Array(u[10..<14]) == Array("-of-".utf8) else { return false }
        return (u[5..<10] + u[14..<19]).allSatisfy { $0 >= 48 && $0 <= 57 }
    }

    /// Removes the parts (after a successful assembly): each part directory holds regular files
    /// only, else it is left alone with an error.
    public func remove() throws {
        for part in try committedParts() { try AtomicOutput.removeFlatDirectory(part.path) }
        if rmdir(path) != 0 && errno != ENOENT && errno != ENOTEMPTY {
            throw SafeTensorsError.outputIO(path: path, operation: "remove", errno: errno)
        }
    }
}
