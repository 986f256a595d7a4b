import Foundation
import Testing
@testable import LoRACore
@testable import LoRAKernels
import SafeTensors

/// The merged bytes do not depend on the machine: every PEFT fixture merged under each instruction
/// set this CPU runs, with 1 and 2 workers and page-sized chunks (so tensors and rows are cut across
/// chunks), gives the same files as the default run.
@Suite("Merged bytes are the same on every instruction set, thread count and chunk size")
struct MergeDeterminismTests {
    /// (instruction set, workers, chunk bytes).
    static var runs: [(InstructionSet, Int, Int)] {
        InstructionSet.available.flatMap { isa in [(isa, 1, 4096), (isa, 2, 4096), (isa, 2, 3 * 4096)] }
    }

    /// Every output file's bytes, by name.
    static func files(in dir: String) throws -> [String: Data] {
        var files: [String: Data] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) {
            files[f] = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f))
        }
        return files
    }

    @Test("Scalar, AVX2, AVX-512 × 1, 2 workers × small chunks: identical output files", arguments: FixtureCase.all)
    func identicalEverywhere(fixture: FixtureCase) throws {
        let out = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: out) }
        var reference = fixture.mergeOptions(output: out + "/default")
        reference.durable = false
        // No digests unless asked: nothing hashed, none reported.
        #expect(try Merge.run(reference).sha256.isEmpty)
        let expected = try MergeDeterminismTests.files(in: out + "/default")
        for (n, (isa, threads, chunk)) in MergeDeterminismTests.runs.enumerated() {
            var o = fixture.mergeOptions(output: "\(out)/\(n)")
            o.instructionSet = isa
            o.threads = threads
            o.chunkSize = chunk
            o.durable = false
            o.checksums = true
            let report = try Merge.run(o)
            let got = try MergeDeterminismTests.files(in: "\(out)/\(n)")
            // The hashes computed while writing (chunks in file order, from any worker) are the files'.
            #expect(report.files.sorted() == got.keys.filter { !$0.hasPrefix(".") }.sorted())
            for f in report.files {
                #expect(report.sha256[f] == (got[f].map { SHA256.hash(Array($0)) }), "\(fixture.name): sha256 of \(f)")
            }
            #expect(got.keys.sorted() == expected.keys.sorted())
            for (name, bytes) in expected where got[name] != bytes {
                Issue.record("\(fixture.name): \(name) differs under \(isa), \(threads) workers, \(chunk)-byte chunks")
            }
            try FileManager.default.removeItem(atPath: "\(out)/\(n)")
        }
    }

    @Test("The process-wide choice follows the setter; LORA_TOOL_ISA values are parsed by name")
    func processWideChoice() throws {
        for isa in InstructionSet.available {
            #expect(try InstructionSet(environmentValue: isa.description) == isa)
        }
        #expect(throws: KernelsError.unknownInstructionSet("sse4")) { try InstructionSet(environmentValue: "sse4") }
        #expect(throws: KernelsError.unknownInstructionSet("AVX2")) { try InstructionSet(environmentValue: "AVX2") }
        for isa in InstructionSet.allCases where !InstructionSet.available.contains(isa) {
            #expect(throws: KernelsError.self) { try InstructionSet(environmentValue: isa.description) }
        }
        Kernels.setInstructionSet(.scalar)
        defer { Kernels.setInstructionSet(nil) }
        #expect(try Kernels.instructionSet() == .scalar)
        #expect(KernelsError.unknownInstructionSet("x").localizedDescription.contains("LORA_TOOL_ISA=x"))
    }
}
