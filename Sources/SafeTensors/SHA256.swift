import CFiles
#if canImport(Glibc)
import Glibc
#endif

/// SHA-256 (FIPS 180-4), streaming, in C (`lora_sha256_*`): the x86 SHA extensions when the CPU
/// has them, portable C otherwise; the same digest either way.
public struct SHA256: Sendable {
    private var state = lora_sha256()

    /// - Parameter accelerated: use the SHA extensions when present (false: the portable code, for tests).
    public init(accelerated: Bool = true) {
        lora_sha256_init(&state, accelerated ? 1 : 0)
    }

    /// Whether this CPU runs the SHA-extension path.
    public static var hardware: Bool { lora_sha256_hardware() != 0 }

    /// Hashes `bytes` after those already hashed.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        lora_sha256_update(&state, base, bytes.count)
    }

    /// The digest of everything hashed, as 64 lowercase hex digits (the hasher is then spent).
    public mutating func finalize() -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        lora_sha256_final(&state, &digest)
        let hex = Array("0123456789abcdef".utf8)
        return String(decoding: digest.flatMap { [hex[Int($0 >> 4)], hex[Int($0 & 15)]] }, as: UTF8.self)
    }

    /// The digest of `bytes`.
    public static func hash(_ bytes: [UInt8], accelerated: Bool = true) -> String {
        var h = SHA256(accelerated: accelerated)
        bytes.withUnsafeBytes { h.update($0) }
        return h.finalize()
    }
}

extension SHA256 {
    /// The digest of the file at `path`, read in 1 MiB pieces.
    /// - Throws: `SafeTensorsError.io` when it cannot be opened or read.
    public static func file(atPath path: String) throws -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SafeTensorsError.io(path: path, operation: "open", errno: errno) }
        defer { close(fd) }
        var h = SHA256()
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)
        defer { buffer.deallocate() }
        while true {
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError.io(path: path, operation: "read", errno: errno)
            }
            if n == 0 { break }
            h.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        }
        return h.finalize()
    }
}
