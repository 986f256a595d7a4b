import Foundation
import Testing
@testable import SafeTensors

/// SHA-256 against FIPS 180-4's examples and Python's hashlib, on both code paths.
@Suite("SHA-256")
struct SHA256Tests {
    static let vectors: [(String, String)] = [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
    ]

    @Test("NIST vectors: empty, \"abc\", the 448-bit message, a million 'a's; portable and SHA-extension paths", arguments: [false, true])
    func nist(accelerated: Bool) {
        for (message, digest) in SHA256Tests.vectors {
            #expect(SHA256.hash(Array(message.utf8), accelerated: accelerated) == digest, "\"\(message)\"")
        }
        // A million 'a's, fed in uneven pieces so partial blocks are carried across updates.
        var h = SHA256(accelerated: accelerated)
        let a = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        a.withUnsafeBytes { all in
            var i = 0, step = 1
            while i < all.count {
                let n = min(step, all.count - i)
                h.update(UnsafeRawBufferPointer(rebasing: all[i..<(i + n)]))
                i += n
                step = step * 3 % 1021 + 1
            }
        }
        #expect(h.finalize() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test("Equals Python's hashlib for a file of every length 0…200 and a 3 MB file",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")))
    func python() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-tool-sha-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var rng = SystemRandomNumberGenerator()
        var files: [(String, [UInt8])] = (0...200).map { n in ("\(dir)/f\(n)", (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }) }
        files.append(("\(dir)/big", (0..<3_000_003).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) }))
        for (path, bytes) in files { try Data(bytes).write(to: URL(fileURLWithPath: path)) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = ["-c", "import hashlib,sys\nfor f in sys.argv[1:]: print(hashlib.sha256(open(f,'rb').read()).hexdigest())"] + files.map(\.0)
        let pipe = Pipe()
        p.standardOutput = pipe
        try p.run()
        let out = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let expected = String(decoding: out, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(expected.count == files.count)
        for ((path, bytes), want) in zip(files, expected) {
            #expect(SHA256.hash(bytes) == want, "\(path)")
            #expect(SHA256.hash(bytes, accelerated: false) == want, "\(path)")
        }
    }
}
