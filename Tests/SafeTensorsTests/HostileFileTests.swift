import Foundation
import Testing
@testable import SafeTensors

#if canImport(Glibc)
import Glibc
#endif

/// A fresh temporary directory, removed by the caller.
private func makeDirectory(_ prefix: String) throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

/// The bytes of a valid safetensors file with one U8 tensor `t` of `count` bytes.
private func tinyFile(in dir: String, count: Int = 16) throws -> [UInt8] {
    let path = dir + "/tiny-\(UUID().uuidString).safetensors"
    let w = try SafeTensorsWriter(path: path, tensors: [TensorInfo(name: "t", dtype: .uint8, shape: [count])])
    try (0..<count).map { UInt8(truncatingIfNeeded: $0) }.withUnsafeBytes { try w.write("t", bytes: $0) }
    try w.finish()
    defer { unlink(path) }
    return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
}

/// Writes `bytes` zstd-compressed to `path`.
private func writeCompressed(_ bytes: [UInt8], to path: String) throws {
    let plain = path + ".plain"
    _ = FileManager.default.createFile(atPath: plain, contents: Data(bytes))
    defer { unlink(plain) }
    try Zstd.compressFile(plain, to: path, level: 3)
}

private func fileSize(_ fd: Int32) -> Int {
    var st = stat()
    return fstat(fd, &st) == 0 ? Int(st.st_size) : -1
}

/// Creates a special file of `kind` at `path` (or returns a system one) and returns the path to use.
private func makeSpecial(_ kind: String, at path: String) throws -> String {
    switch kind {
    case "a FIFO":
        guard mkfifo(path, 0o600) == 0 else { throw SafeTensorsError.io(path: path, operation: "mkfifo", errno: errno) }
        // Should a regression open the FIFO with a blocking open, unblock it after a while so the
        // test fails (it would read an empty file) instead of hanging.
        DispatchQueue.global().asyncAfter(deadline: .now() + 5) {
            let fd = open(path, O_WRONLY | O_NONBLOCK)
            if fd >= 0 { close(fd) }
        }
        return path
    case "a socket":
        let s = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard s >= 0 else { throw SafeTensorsError.io(path: path, operation: "socket", errno: errno) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8CString)
        guard bytes.count <= MemoryLayout.size(ofValue: address.sun_path) else {
            throw SafeTensorsError.io(path: path, operation: "bind", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { p in bytes.withUnsafeBytes { p.copyMemory(from: $0) } }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        close(s)  // the socket file stays on disk
        guard bound == 0 else { throw SafeTensorsError.io(path: path, operation: "bind", errno: errno) }
        return path
    case "a directory":
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        return path
    default:  // "a character device"
        return "/dev/zero"
    }
}

@Suite("Non-regular files are refused by name, never opened for a blocking read")
struct NonRegularFileTests {
    static let kinds = ["a FIFO", "a socket", "a directory", "a character device"]

    @Test("RegularFile.open, MappedFile and SafeTensorsFile (plain and .zst) refuse each kind", arguments: kinds)
    func refused(kind: String) throws {
        let dir = try makeDirectory("special")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for name in ["m.safetensors", "m.safetensors.zst"] {
            let path = try makeSpecial(kind, at: dir + "/" + name)
            let expected = SafeTensorsError.unsupportedInput(path: path, detail: "not a regular file (\(kind))")
            #expect(throws: expected) { _ = try RegularFile.open(path) }
            #expect(throws: expected) { _ = try RegularFile.readAll(path, limit: 1000) }
            #expect(throws: expected) { _ = try MappedFile(path: path) }
            #expect(throws: expected) { _ = try SafeTensorsFile(path: path) }
            #expect(throws: expected) { _ = try SafeTensorsFile(path: path, headerOnly: true) }
            if kind == "a character device" { break }
        }
    }

    @Test("A checkpoint directory holding a FIFO or socket named like a shard is refused, naming it",
          arguments: [("a FIFO", "b.safetensors"), ("a socket", "b.safetensors.zst"), ("a FIFO", "model.safetensors.index.json")])
    func directory(kind: String, name: String) throws {
        let dir = try makeDirectory("special-dir")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = FileManager.default.createFile(atPath: dir + "/a.safetensors", contents: Data(try tinyFile(in: dir)))
        let path = try makeSpecial(kind, at: dir + "/" + name)
        #expect(throws: SafeTensorsError.unsupportedInput(path: path, detail: "not a regular file (\(kind))")) {
            _ = try Checkpoint(path: dir)
        }
    }

    @Test("readAll refuses a file over its limit from its size, and reads one at the limit",
          arguments: [(999, false), (1000, false), (1001, true)])
    func readAllLimit(size: Int, refused: Bool) throws {
        let dir = try makeDirectory("limit")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/config.json"
        let content = (0..<size).map { UInt8(truncatingIfNeeded: $0) }
        _ = FileManager.default.createFile(atPath: path, contents: Data(content))
        if refused {
            #expect(throws: SafeTensorsError.unsupportedInput(path: path, detail: "is \(size) bytes, more than the 1000-byte limit for this file")) {
                _ = try RegularFile.readAll(path, limit: 1000)
            }
        } else {
            #expect(try RegularFile.readAll(path, limit: 1000) == content)
        }
    }

    @Test("A missing file is an io error naming it")
    func missing() {
        #expect(throws: SafeTensorsError.io(path: "/nonexistent/x.safetensors", operation: "open", errno: ENOENT)) {
            _ = try RegularFile.open("/nonexistent/x.safetensors")
        }
    }
}

@Suite("zstd inputs are bounded by their own header")
struct ZstdBoundTests {
    /// The valid file's bytes followed by `extra` zero bytes: its header declares less than the stream holds.
    @Test("Decompressing more than the header declares stops at the first extra byte",
          arguments: [1, 4096, 8 << 20])
    func bomb(extra: Int) throws {
        let dir = try makeDirectory("bomb")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let valid = try tinyFile(in: dir)
        let path = dir + "/bomb.safetensors.zst"
        try writeCompressed(valid + [UInt8](repeating: 0, count: extra), to: path)
        let expected = SafeTensorsError.unsupportedInput(
            path: path, detail: "decompressed data exceeds the \(valid.count) bytes its header declares")

        // The output never holds more than the declared size (it stops before writing a buffer
        // that holds an extra byte).
        let outPath = dir + "/out"
        let out = open(outPath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        try #require(out >= 0)
        defer { close(out) }
        #expect(throws: expected) { try Zstd.decompress(path, into: out) }
        #expect(fileSize(out) <= valid.count)

        #expect(throws: expected) { _ = try SafeTensorsFile(path: path) }
        #expect(throws: expected) { _ = try Checkpoint(path: path) }

        // Header-only: decompresses exactly the prefix and header, and succeeds.
        let reader = try ZstdReader(path: path)
        let prefix = try Zstd.readHeader(reader)
        #expect(reader.produced == UInt64(prefix.bytes.count))
        #expect(prefix.totalSize == UInt64(valid.count))
        let file = try SafeTensorsFile(path: path, headerOnly: true)
        #expect(file.tensors.map(\.name) == ["t"] && !file.hasData)
    }

    @Test("A stream shorter than its header declares is truncated, and says how short",
          arguments: [1, 15])
    func truncated(missing: Int) throws {
        let dir = try makeDirectory("short")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let valid = try tinyFile(in: dir)
        let path = dir + "/short.safetensors.zst"
        try writeCompressed(Array(valid.dropLast(missing)), to: path)
        #expect(throws: SafeTensorsError.unsupportedInput(
            path: path, detail: "decompressed data is truncated: \(valid.count - missing) bytes, but its header declares \(valid.count)")) {
            _ = try SafeTensorsFile(path: path)
        }
        #expect(try SafeTensorsFile(path: path, headerOnly: true).tensors.count == 1)
    }

    @Test("A header declaring more data than the disk holds is refused before anything is written")
    func declaresTooMuch() throws {
        let dir = try makeDirectory("huge")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let huge = 1 << 56
        let json = Array(#"{"t":{"dtype":"U8","shape":[\#(huge)],"data_offsets":[0,\#(huge)]}}"#.utf8)
        var bytes = withUnsafeBytes(of: UInt64(json.count).littleEndian, Array.init) + json
        bytes += [UInt8](repeating: 0, count: 1 << 20)
        let path = dir + "/huge.safetensors.zst"
        try writeCompressed(bytes, to: path)
        let out = open(dir + "/out", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        try #require(out >= 0)
        defer { close(out) }
        do {
            try Zstd.decompress(path, into: out)
            Issue.record("accepted")
        } catch let SafeTensorsError.unsupportedInput(p, detail) {
            #expect(p == path && detail.contains("decompresses to \(8 + json.count + huge) bytes"), "\(detail)")
        }
        #expect(fileSize(out) == 0)
        // Header-only reading does not care.
        #expect(try SafeTensorsFile(path: path, headerOnly: true).tensors.first?.shape == [huge])
    }

    @Test("A header length over the cap is refused after decompressing only the 8-byte prefix")
    func headerTooLarge() throws {
        let dir = try makeDirectory("cap")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/cap.safetensors.zst"
        try writeCompressed(withUnsafeBytes(of: (Header.maximumLength + 1).littleEndian, Array.init) + [UInt8](repeating: 0x20, count: 1 << 20), to: path)
        let reader = try ZstdReader(path: path)
        #expect(throws: SafeTensorsError.headerTooLarge(file: path, length: Header.maximumLength + 1)) { _ = try Zstd.readHeader(reader) }
        #expect(reader.produced == 8)
    }

    @Test("Header-only opening never reaches corrupt data after the header; full opening does")
    func headerOnlyStopsAtHeader() throws {
        let dir = try makeDirectory("garbage")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let valid = try tinyFile(in: dir, count: 4 << 20)
        let path = dir + "/g.safetensors.zst"
        try writeCompressed(valid, to: path)
        // A second "frame" of garbage: zstd only reads it after the first frame's 4 MiB are out.
        let handle = try #require(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data("garbage, not a zstd frame".utf8))
        handle.closeFile()
        #expect(throws: SafeTensorsError.self) { _ = try SafeTensorsFile(path: path) }
        let checkpoint = try Checkpoint(path: path, headerOnly: true)
        #expect(checkpoint.info("t")?.shape == [4 << 20])
        #expect(throws: SafeTensorsError.unsupportedInput(
            path: path, detail: "opened for its header only; the tensor data of this compressed file was not decompressed")) {
            _ = try checkpoint.bytes(of: "t")
        }
    }

    @Test("A valid compressed file decompresses exactly, in full or header-only", arguments: [0, 1, (1 << 20) - 30, 3 << 20])
    func exact(count: Int) throws {
        let dir = try makeDirectory("exact")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let valid = try tinyFile(in: dir, count: count)
        let path = dir + "/e.safetensors.zst"
        try writeCompressed(valid, to: path)
        let full = try SafeTensorsFile(path: path)
        #expect(full.map.size == valid.count)
        #expect(Array(full.bytes(of: full.tensors[0])) == Array(valid[full.dataStart...]))
        let header = try SafeTensorsFile(path: path, headerOnly: true)
        #expect(header.tensors == full.tensors && header.headerLength == full.headerLength)
    }
}
