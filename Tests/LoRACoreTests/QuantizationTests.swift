import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("QuantFixtures").path

@Suite("bitsandbytes 4-bit bases")
struct QuantizationTests {
    static let cases = ["qlora_nf4_double", "qlora_fp4"]

    @Test("Dequantization equals bitsandbytes' dequantize_4bit bit for bit", arguments: cases)
    func dequantize(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let n = try Dequantize.run(input: "\(fixtures)/\(fixture)/base", output: dir + "/dense")
        #expect(n == 7)
        let ours = try Checkpoint(path: dir + "/dense"), bnb = try Checkpoint(path: "\(fixtures)/\(fixture)/dequantized")
        #expect(ours.names == bnb.names)
        for name in bnb.names { #expect(try ours.bytes(of: name).elementsEqual(try bnb.bytes(of: name)), "\(name)") }
        let config = String(decoding: FileManager.default.contents(atPath: dir + "/dense/config.json")!, as: UTF8.self)
        #expect(!config.contains("quantization_config"))
    }

    @Test("Merging into a 4-bit base equals dequantize-then-merge rounded once, and verify accepts it", arguments: cases)
    func merge(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = "\(fixtures)/\(fixture)/adapter"
        let report = try Merge.run(MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [(adapter, 1)], output: dir + "/m"))
        #expect(report.dequantizedBase)
        let ours = try Checkpoint(path: dir + "/m"), expected = try Checkpoint(path: "\(fixtures)/\(fixture)/merged")
        #expect(ours.names == expected.names)
        for name in expected.names {
            let d = ulpDistance(try ours.bytes(of: name), try expected.bytes(of: name), dtype: ours.info(name)!.dtype)
            #expect(d <= 1, "\(name): \(d) ulp")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains("dequantized") }.isEmpty)
        #expect(try Verify.run(VerifyOptions(base: "\(fixtures)/\(fixture)/base", adapters: [(adapter, 1)], merged: dir + "/m")).passed)
    }

    @Test("inspect reports quant type, block size, double quantization and the size saving")
    func inspect() throws {
        let r = try Inspect.run(path: "\(fixtures)/qlora_nf4_double/base")
        let q = try #require(r.quantization)
        #expect(q.quantTypes == ["nf4"] && q.blocksizes == [64] && q.doubleQuantization && q.computeDType == "BF16")
        #expect(q.denseBytes > 2 * q.quantizedBytes)
        #expect(try Inspect.run(path: "\(fixtures)/qlora_fp4/base").quantization?.doubleQuantization == false)
    }
}
