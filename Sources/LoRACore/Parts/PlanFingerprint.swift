import Foundation
import SafeTensors

/// The identity of a partitioned job, equal on every worker exactly when they would write parts of
/// the same output: SHA-256 over the options that shape the output and, for every input file, its
/// name, size and safetensors header (other files, such as configs and tokenizers, by content).
///
/// Paths are left out (a shared file system may be mounted at different places), so is anything
/// about the machine (threads, instruction set: the output bytes do not depend on them).
public enum PlanFingerprint {
    /// - Parameters:
    ///   - options: `key=value` lines naming every option that changes the output, in a fixed order.
    ///   - inputs: the input paths (model directories or files), in the job's order.
    /// - Throws: `SafeTensorsError` when an input file cannot be read.
    public static func compute(options: [String], inputs: [String]) throws -> String {
        var hasher = SHA256()
        func add(_ line: String) {
            let bytes = Array((line + "\n").utf8)
            bytes.withUnsafeBytes { hasher.update($0) }
        }
        add("lora-tool partitioned merge, plan format 1")
        options.forEach(add)
        for (n, input) in inputs.enumerated() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: input, isDirectory: &isDirectory) else {
                throw SafeTensorsError.io(path: input, operation: "open", errno: ENOENT)
            }
            let files = isDirectory.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: input).filter { !$0.hasPrefix(".") }.sorted(by: utf8Precedes).map { (input + "/" + $0, $0) }
                : [(input, (input as NSString).lastPathComponent)]
            for (path, name) in files {
                var st = stat()
                guard stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
                add("input \(n) \(name) \(st.st_size) \(try identity(of: path, size: Int(st.st_size)))")
            }
        }
        return hasher.finalize()
    }

    /// A safetensors file's header hash (its tensors' bytes are covered by the size and the offsets
    /// the header gives); any other file's content hash.
    private static func identity(of path: String, size: Int) throws -> String {
        guard path.hasSuffix(".safetensors") else { return try SHA256.file(atPath: path) }
        let fd = try RegularFile.open(path)
        defer { close(fd) }
        var prefix = [UInt8](repeating: 0, count: 8)
        guard size >= 8, pread(fd, &prefix, 8, 0) == 8 else { return try SHA256.file(atPath: path) }
        let length = prefix.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self))) }
        guard length <= size - 8, length <= 100_000_000 else { return try SHA256.file(atPath: path) }
        var header = [UInt8](repeating: 0, count: length)
        guard pread(fd, &header, length, 8) == length else { throw SafeTensorsError.io(path: path, operation: "read", errno: errno) }
        return SHA256.hash(header)
    }
}
