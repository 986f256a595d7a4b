import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("QuantFixtures").path

@Suite("verify of merges written back in the base's quantized scheme (--requantize keep, --keep-quantized)")
struct VerifyRequantizedTests {
    /// Merges the fixture's adapter into its quantized base, written back in its scheme.
    private func merge(_ fixture: String, in dir: String, keepQuantized: Bool = false) throws -> String {
        var options = MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [("\(fixtures)/\(fixture)/adapter", 1)], output: dir + "/merged")
        if keepQuantized { options.keepQuantized = true } else { options.requantize = "keep" }
        options.durable = false
        _ = try Merge.run(options)
        return dir + "/merged"
    }

    private func verify(_ fixture: String, merged: String, mode: VerifyMode = .both) throws -> VerifyReport {
        var v = VerifyOptions(base: "\(fixtures)/\(fixture)/base", adapters: [("\(fixtures)/\(fixture)/adapter", 1)], merged: merged)
        v.seed = 3
        v.mode = mode
        return try Verify.run(v)
    }

    @Test("A requantized merge passes (before: every scale and quant state failed as an extra tensor); one changed byte in a merged weight's codes fails naming that weight only; --mode probes is refused with the reason",
          arguments: ["fp8_block", "int8", "ct_fp8_channel", "ct_fp8_tensor", "qlora_nf4", "qlora_nf4_double"])
    func requantized(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let merged = try merge(fixture, in: dir)
        let report = try verify(fixture, merged: merged)
        #expect(report.passed, "\(report.entries.filter { !$0.failures.isEmpty }.map { "\($0.tensor): \($0.failures)" })")
        #expect(report.entries.contains { $0.kind == .merged } && report.probesSkipped != nil)

        // Tamper with the first merged weight's stored bytes.
        let checkpoint = try Checkpoint(path: merged)
        let target = try #require(report.entries.first { $0.kind == .merged }?.tensor)
        let location = try #require(checkpoint.location(of: target))
        let file = location.file.path
        var bytes = try RegularFile.readAll(file, limit: 1 << 26)
        bytes[location.offset + location.count / 2] ^= 0x10
        try Data(bytes).write(to: URL(fileURLWithPath: file))
        let tampered = try verify(fixture, merged: merged)
        #expect(!tampered.passed && tampered.entries.filter { !$0.failures.isEmpty }.map(\.tensor) == [target])
        #expect(throws: LoRACoreError.self) { try verify(fixture, merged: merged, mode: .probes) }
    }

    @Test("An MXFP4 merge written back (--requantize keep) passes; one changed byte in an expert's blocks or scales fails naming that tensor only; --mode probes is refused",
          arguments: ["model.layers.0.mlp.experts.gate_up_proj_blocks", "model.layers.0.mlp.experts.down_proj_scales"])
    func mxfp4(tensor: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let base = "\(fixtures)/mxfp4/base", adapter = "\(fixtures)/mxfp4/adapter-experts"
        var options = MergeOptions(base: base, adapters: [(adapter, 1)], output: dir + "/merged")
        options.requantize = "keep"
        options.durable = false
        _ = try Merge.run(options)
        var v = VerifyOptions(base: base, adapters: [(adapter, 1)], merged: dir + "/merged")
        v.seed = 3
        let report = try Verify.run(v)
        #expect(report.passed, "\(report.entries.filter { !$0.failures.isEmpty }.map { "\($0.tensor): \($0.failures)" })")
        #expect(report.entries.contains { $0.tensor == tensor && $0.kind == .merged } && report.probesSkipped != nil)

        let location = try #require(try Checkpoint(path: dir + "/merged").location(of: tensor))
        var bytes = try RegularFile.readAll(location.file.path, limit: 1 << 26)
        bytes[location.offset + location.count / 2] ^= 0x01
        try Data(bytes).write(to: URL(fileURLWithPath: location.file.path))
        let tampered = try Verify.run(v)
        #expect(!tampered.passed && tampered.entries.filter { !$0.failures.isEmpty }.map(\.tensor) == [tensor])
        v.mode = .probes
        #expect(throws: LoRACoreError.self) { try Verify.run(v) }
    }

    @Test("With --dtype f32 (dense tensors cast, codes and tables kept) the requantized merge passes, config.json naming float32; a dense tensor left in the base's dtype fails",
          arguments: ["fp8_block", "qlora_nf4_double", "int8"])
    func castOutput(fixture: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = MergeOptions(base: "\(fixtures)/\(fixture)/base", adapters: [("\(fixtures)/\(fixture)/adapter", 1)], output: dir + "/merged")
        options.requantize = "keep"
        options.dtype = .f32
        options.durable = false
        options.verify = true
        _ = try Merge.run(options)
        let report = try verify(fixture, merged: dir + "/merged")
        #expect(report.passed, "\(report.entries.filter { !$0.failures.isEmpty }.map { "\($0.tensor): \($0.failures)" }) \(report.files.filter { $0.status != .equal }.map { "\($0.file): \($0.detail ?? "")" })")
        // The same merge without --dtype is not this output: its dense tensors keep the base's dtype.
        options.dtype = .keep
        options.output = dir + "/plain"
        options.verify = false
        _ = try Merge.run(options)
        let norm = "model.norm.weight"
        #expect(try Checkpoint(path: dir + "/merged").info(norm)?.dtype == .float32)
        #expect(try Checkpoint(path: dir + "/plain").info(norm)?.dtype != .float32)
        try FileManager.default.removeItem(atPath: dir + "/plain/config.json")
        try FileManager.default.copyItem(atPath: dir + "/merged/config.json", toPath: dir + "/plain/config.json")
        let mixed = try verify(fixture, merged: dir + "/plain")
        #expect(mixed.passed == false)
    }

    @Test("--keep-quantized (merged weights dense, the others 4-bit, skip modules grown) passes; without its quantization_config the config fails")
    func keepQuantized() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let merged = try merge("qlora_nf4", in: dir, keepQuantized: true)
        #expect(try verify("qlora_nf4", merged: merged).passed)
        let config = merged + "/config.json"
        var members = try SideFiles.readJSON(config)!.objectMembers!
        members.removeAll { $0.key == "quantization_config" }
        try Data(JSONWriter.pretty(.object(members)).utf8).write(to: URL(fileURLWithPath: config))
        let report = try verify("qlora_nf4", merged: merged)
        #expect(!report.passed && report.files.contains { $0.file == "config.json" && !$0.passed })
    }
}
