import Foundation
import Testing
@testable import SafeTensors

/// A whole safetensors file in memory: `count` one-byte U8 tensors named like model weights, then
/// `padding` spaces after the JSON and an optional `__metadata__` string of `metadataBytes` bytes.
private func makeFile(tensors count: Int, padding: Int = 0, metadataBytes: Int = 0) -> [UInt8] {
    var json: [UInt8] = []
    json.reserveCapacity(count * 80 + padding + metadataBytes + 64)
    json += Array("{".utf8)
    if metadataBytes > 0 {
        json += Array(#""__metadata__":{"format":"pt","blob":""#.utf8)
        json += [UInt8](repeating: UInt8(ascii: "x"), count: metadataBytes)
        json += Array(#""}"#.utf8)
        if count > 0 { json += Array(",".utf8) }
    }
    for i in 0..<count {
        if i > 0 { json.append(UInt8(ascii: ",")) }
        json += Array(#""model.layers.\#(i / 10).block.m\#(i % 10)_proj.weight":{"dtype":"U8","shape":[1],"data_offsets":[\#(i),\#(i + 1)]}"#.utf8)
    }
    json += Array("}".utf8)
    json += [UInt8](repeating: 0x20, count: padding)
    var file = withUnsafeBytes(of: UInt64(json.count).littleEndian, Array.init)
    file += json
    file += [UInt8](repeating: 7, count: count)
    return file
}

@Suite("Large headers: linear work, memory proportional to the header")
struct LargeHeaderTests {
    @Test("500,000 tiny tensors parse, in data order, each found by name")
    func manyTensors() throws {
        let count = 500_000
        let bytes = makeFile(tensors: count)
        let (header, length) = try bytes.withUnsafeBytes { try SafeTensorsFile.parse($0, file: "many") }
        #expect(length == bytes.count - 8 - count)
        #expect(header.tensors.count == count)
        #expect(header.dataSize == UInt64(count))
        #expect(header.tensors[123_456].name == "model.layers.12345.block.m6_proj.weight")
        #expect(header.tensors[123_456].dataOffsets == (123_456, 123_457))
    }

    @Test("100,000 tensors in two shards with an index open as one checkpoint")
    func manyTensorsSharded() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("many-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let perShard = 50_000
        var weightMap: [(key: String, value: JSONValue)] = []
        weightMap.reserveCapacity(2 * perShard)
        for shard in 0..<2 {
            let name = "model-0000\(shard + 1)-of-00002.safetensors"
            let tensors = (0..<perShard).map { TensorInfo(name: "s\(shard).t\($0).weight", dtype: .uint8, shape: [1]) }
            let w = try SafeTensorsWriter(path: dir + "/" + name, tensors: tensors)
            let one: [UInt8] = [1]
            try one.withUnsafeBytes { b in while let t = w.nextTensor { try w.write(t.name, bytes: b) } }
            try w.finish()
            for t in tensors { weightMap.append((t.name, .string(name))) }
        }
        let index = ShardIndex(weightMap: weightMap.map { ($0.key, $0.value.stringValue!) }, totalSize: UInt64(2 * perShard))
        _ = FileManager.default.createFile(atPath: dir + "/model.safetensors.index.json", contents: Data(index.serialized()))
        let c = try Checkpoint(path: dir)
        #expect(c.count == 2 * perShard)
        #expect(c.names.first == "s0.t0.weight" && c.file(of: "s1.t7.weight")?.path.hasSuffix("00002.safetensors") == true)
    }

    @Test("A 40 MB header parses, whatever fills it", arguments: ["metadata", "padding"])
    func fortyMegabytes(filler: String) throws {
        let bytes = filler == "metadata" ? makeFile(tensors: 3, metadataBytes: 40_000_000) : makeFile(tensors: 3, padding: 40_000_000)
        let (header, length) = try bytes.withUnsafeBytes { try SafeTensorsFile.parse($0, file: "big") }
        #expect(length > 40_000_000)
        #expect(header.tensors.count == 3)
        if filler == "metadata" { #expect(header.metadata?.last?.value.utf8.count == 40_000_000) }
    }
}
