import Foundation
@testable import GGUF
import Testing

/// Compares two headers field by field (metadata tuples are not Equatable).
func same(_ a: GGUFHeader, _ b: GGUFHeader) -> Bool {
    a.version == b.version && a.alignment == b.alignment && a.dataStart == b.dataStart && a.infoEnd == b.infoEnd
        && a.fileSize == b.fileSize && a.tensors == b.tensors
        && a.metadata.map(\.key) == b.metadata.map(\.key) && a.metadata.map(\.value) == b.metadata.map(\.value)
}

@Suite("GGUF header-only reading (pread, no mapping)")
struct GGUFHeaderOnlyTests {
    static func temporary(_ name: String) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-header-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir + "/" + name
    }

    static let malformed = try! FileManager.default.contentsOfDirectory(atPath: "\(fixtures)/malformed").sorted()

    @Test("each malformed fixture is the same GGUFError mapped and header-only", arguments: malformed)
    func malformedFixture(file: String) throws {
        let path = "\(fixtures)/malformed/\(file)"
        var mapped: GGUFError?
        do { _ = try GGUFFile(path: path) } catch let e as GGUFError { mapped = e }
        var headerOnly: GGUFError?
        do { _ = try GGUFFile.readHeader(path: path) } catch let e as GGUFError { headerOnly = e }
        #expect(mapped != nil)
        #expect(mapped == headerOnly)
    }

    @Test("readHeader reads what the mapped parse reads", arguments: fixtureNames)
    func sameAsMapped(name: String) throws {
        let path = "\(fixtures)/\(name).gguf"
        #expect(same(try GGUFFile.readHeader(path: path), try GGUFFile(path: path).header))
    }

    @Test("a header longer than the first read (a 3 MB string) is read in full")
    func longHeader() throws {
        var b = GGUFBytes()
        b.header(tensors: 1, keys: 1)
        b.string("tokenizer.chat_template")
        b.u32(8)
        b.string(String(repeating: "é", count: 1_500_000))
        b.tensor("t", dims: [4], offset: 0)
        b.pad(to: 32)
        b.bytes += [UInt8](repeating: 0, count: 16)
        let path = try Self.temporary("long.gguf")
        try Data(b.bytes).write(to: URL(fileURLWithPath: path))
        let h = try GGUFFile.readHeader(path: path)
        #expect(h.value("tokenizer.chat_template")?.string?.utf8.count == 3_000_000)
        #expect(h.tensors.map(\.name) == ["t"])
    }

    @Test("on truncated files readHeader throws the same error as parse", arguments: fixtureNames)
    func truncatedSameErrors(name: String) throws {
        let full = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(fixtures)/\(name).gguf")))
        let path = try Self.temporary("cut-\(name).gguf")
        for n in stride(from: 0, to: full.count, by: 37) {
            let prefix = Array(full[0..<n])
            try Data(prefix).write(to: URL(fileURLWithPath: path))
            var fromParse: GGUFError?
            do { _ = try prefix.withUnsafeBytes { try GGUFFile.parse($0, file: path) } } catch let e as GGUFError { fromParse = e }
            var fromRead: GGUFError?
            do { _ = try GGUFFile.readHeader(path: path) } catch let e as GGUFError { fromRead = e }
            #expect(fromParse == fromRead, "prefix of \(n) bytes")
        }
    }
}
