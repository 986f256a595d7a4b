import Foundation
import Testing

private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

/// Runs the built `lora-tool` from the repository root and returns (exit status, stdout, stderr).
func run(_ arguments: [String]) throws -> (Int32, String, String) {
    try run(arguments, in: root)
}

@Suite("lora-tool on the command line")
struct CommandLineTests {
    static let malformed = try! FileManager.default.contentsOfDirectory(atPath: "\(root)/Tests/SafeTensorsTests/Fixtures/malformed").sorted()

    @Test("inspect on a malformed file: exit 1, one error line naming the file, no crash", arguments: malformed)
    func malformedFile(file: String) throws {
        let path = "Tests/SafeTensorsTests/Fixtures/malformed/\(file)"
        let (status, out, err) = try run(["inspect", path])
        #expect(status == 1)
        #expect(out.isEmpty)
        #expect(err.hasPrefix("error: \(path)"))
        #expect(err.split(separator: "\n").count == 1)
    }

    @Test("inspect reports the sample adapter's rank, alpha and scale as JSON")
    func inspectJSON() throws {
        let (status, out, _) = try run(["inspect", "samples/tiny-llama-lora", "--json", "--base", "samples/tiny-llama"])
        #expect(status == 0)
        #expect(out.contains(#""kind": "adapter""#))
        #expect(out.contains(#""ranks": [\#n      8\#n    ]"#))
        #expect(out.contains(#""lora_alpha": 16"#))
        #expect(out.contains(#""scale": 2"#))
        #expect(out.contains(#""problems": []"#))
    }

    @Test("inspect on a model directory counts module families and layers")
    func inspectModel() throws {
        let (status, out, _) = try run(["inspect", "samples/tiny-llama"])
        #expect(status == 0)
        #expect(out.contains("samples/tiny-llama: model"))
        #expect(out.contains("q_proj ×2"))
        #expect(out.split(separator: "\n").contains { $0.hasPrefix("  layers ") && $0.hasSuffix(" 2") })
    }

    @Test("inspect names each dialect and its scale rule", arguments: [
        ("llama_kohya", "kohya LoRA (sd-scripts)", "alpha/r per module"),
        ("llama_mlx", "mlx-lm LoRA", "given directly"),
        ("llama_adalora", "PEFT AdaLoRA", "α/(init_r + 1e-5)"),
        ("llama_sora", "SoRA (PEFT-like keys with gates)", "α/r"),
        ("conv_kohya", "kohya LoRA (sd-scripts)", "alpha/r"),
        ("llama_dora", "PEFT LoRA (DoRA)", "α/r"),
        ("llama_bf16_rslora_patterns", "PEFT LoRA (rsLoRA)", "α/√r"),
        ("llama_embedding_modules_to_save", "PEFT LoRA (embedding LoRA)", "α/r"),
    ])
    func dialects(fixture: String, dialect: String, rule: String) throws {
        let dir = "Tests/LoRACoreTests/Fixtures/\(fixture)"
        let (status, out, err) = try run(["inspect", dir + "/adapter", "--base", dir + "/base"])
        #expect(status == 0, "\(err)")
        #expect(out.contains("dialect         \(dialect)"))
        #expect(out.contains(rule))
        #expect(out.contains("every module finds its base tensor"))
    }

    @Test("convert LyCORIS LoKr → PEFT → LyCORIS: exit 0 with the scales and the α = r note; a PEFT LoKr that LyCORIS cannot scale: exit 1, one error line naming the module")
    func convertLycoris() throws {
        let fixtures = "Tests/LoRACoreTests/AdapterTypeFixtures"
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("lyco-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        let (s1, o1, e1) = try run(["convert", "\(fixtures)/lycoris_lokr/adapter.safetensors", "--to", "peft", "--base", "\(fixtures)/bases/f32", "--output", out + "/peft"])
        #expect(s1 == 0, "\(e1)")
        #expect(o1.contains("LyCORIS LoKr (kohya names)") && o1.contains("modules  4, scales 1, 1.5") && o1.contains("written with α = r"), "\(o1)")
        let (s2, o2, e2) = try run(["convert", out + "/peft", "--to", "kohya", "--output", out + "/back.safetensors"])
        #expect(s2 == 0, "\(e2)")
        #expect(o2.contains("from     PEFT LoKr"))
        let (s3, o3, e3) = try run(["convert", "\(fixtures)/peft_lokr/adapter", "--to", "kohya", "--output", out + "/no.safetensors"])
        #expect(s3 == 1 && o3.isEmpty)
        #expect(e3.hasPrefix("error: module 'model.layers.0.self_attn.v_proj': LyCORIS scales a LoKr whose halves are both full matrices by 1"), "\(e3)")
        #expect(e3.split(separator: "\n").count == 1)
        #expect(!FileManager.default.fileExists(atPath: out + "/no.safetensors"))
    }

    @Test("Hand-written layouts need --scale or --alpha/--rank, and say so; with them they merge to plain names")
    func handWritten() throws {
        let dir = "Tests/LoRACoreTests/Fixtures/handwritten_parametrize"
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("hw-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: out) }
        let (s1, _, e1) = try run(["merge", "--base", dir + "/base", "--adapter", dir + "/adapter", "--output", out, "--quiet"])
        #expect(s1 == 1)
        #expect(e1.contains("--scale") && e1.contains("--alpha"))
        #expect(!FileManager.default.fileExists(atPath: out))
        let (s2, _, e2) = try run(["merge", "--base", dir + "/base", "--adapter", dir + "/adapter", "--alpha", "6", "--rank", "4", "--output", out, "--quiet"])
        #expect(s2 == 0, "\(e2)")
        let (s3, o3, _) = try run(["inspect", out, "--tensors"])
        #expect(s3 == 0)
        #expect(o3.contains("0.weight") && !o3.contains("parametrizations"))
        let (s4, o4, _) = try run(["inspect", dir + "/adapter", "--scale", "1.5"])
        #expect(s4 == 0)
        #expect(o4.contains("hand-written LoRA (torch parametrizations)"))
    }

    @Test("Pickle files are refused without being opened")
    func pickle() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pickle-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = FileManager.default.createFile(atPath: dir + "/pytorch_model.bin", contents: Data([0x80, 0x02]))
        let (status, _, err) = try run(["inspect", dir + "/pytorch_model.bin"])
        #expect(status == 1)
        #expect(err.contains("pickle"))
    }

    @Test("Help prints usage and exits 0", arguments: [["--help"], ["merge", "--help"], ["extract", "--help"], ["help", "verify"]])
    func help(arguments: [String]) throws {
        let (status, out, _) = try run(arguments)
        #expect(status == 0)
        #expect(out.contains("USAGE:") || out.contains("Usage:"))
    }

    @Test("Usage errors exit 64")
    func usage() throws {
        #expect(try run(["merge", "--base", "x", "--output", "y"]).0 == 64)
        #expect(try run(["merge", "--base", "x", "--adapter", "a", "--weight", "1", "--weight", "2", "--output", "y"]).0 == 64)
        #expect(try run(["merge", "--base", "x", "--adapter", "a", "--output", "y", "--dtype", "f8"]).0 == 64)
        #expect(try run(["extract", "--base", "x", "--finetuned", "y", "--rank", "4", "--output", "z", "--power-iterations", "9"]).0 == 64)
    }

    @Test("merge --no-sync writes the same bytes as the durable default")
    func noSync() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (out, flags) in [("durable", [String]()), ("page-cache", ["--no-sync"])] {
            let (status, _, err) = try run(["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--output", dir + "/" + out, "--quiet"] + flags)
            #expect(status == 0, "\(err)")
        }
        let durable = FileManager.default.contents(atPath: dir + "/durable/model.safetensors")
        #expect(durable != nil && durable == FileManager.default.contents(atPath: dir + "/page-cache/model.safetensors"))
    }

    @Test("merge --requantize --verify probes the dense merge before it is written 4-bit")
    func requantizeVerify() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let q = "Tests/LoRACoreTests/QuantFixtures/qlora_nf4_double"
        let (status, out, err) = try run(["merge", "--base", q + "/base", "--adapter", q + "/adapter", "--output", dir + "/q", "--requantize", "nf4", "--verify"])
        #expect(status == 0, "\(err)")
        #expect(out.contains("2 merged tensors on 8 probes") && out.contains("as computed before requantizing: all pass"))
    }

    @Test("The README's compressed-tensors FP8 commands: inspect names the scheme and granularity; a dense merge verifies against the quantized base; --requantize keep --verify reports survival", arguments: [
        ("ct_fp8_channel", "per channel"), ("ct_fp8_tensor", "per tensor"), ("ct_fp8_tensor_static", "per tensor"),
    ])
    func compressedTensorsFP8(fixture: String, granularity: String) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let q = "Tests/LoRACoreTests/QuantFixtures/" + fixture
        let (s1, o1, _) = try run(["inspect", q + "/base"])
        #expect(s1 == 0 && o1.contains("  quantized  compressed-tensors fp8, \(granularity): 7 weights, compute dtype BF16"), "\(o1)")
        let (s2, _, e2) = try run(["merge", "--base", q + "/base", "--adapter", q + "/adapter", "--output", dir + "/m", "--quiet"])
        #expect(s2 == 0, "\(e2)")
        let (s3, o3, e3) = try run(["verify", "--base", q + "/base", "--adapter", q + "/adapter", "--merged", dir + "/m"])
        #expect(s3 == 0 && o3.contains("PASS"), "\(e3)")
        let (s4, o4, e4) = try run(["merge", "--base", q + "/base", "--adapter", q + "/adapter", "--output", dir + "/q", "--requantize", "keep", "--verify"])
        #expect(s4 == 0, "\(e4)")
        #expect(o4.split(separator: "\n").filter { $0.contains("requantized     model.layers.0.") && $0.contains("of codes changed, delta kept") }.count == 4)
        #expect(o4.contains("4 merged tensors on 8 probes") && o4.contains("as computed before requantizing: all pass"))
    }

    @Test("The README's MXFP4 commands: inspect, dequantize, a dense merge with --verify, --requantize keep --verify with its survival lines, verify of the requantized output; --keep-quantized refused")
    func mxfp4() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let q = "Tests/LoRACoreTests/QuantFixtures/mxfp4"
        let (s1, o1, _) = try run(["inspect", q + "/base"])
        #expect(s1 == 0 && o1.contains("mxfp4, block 32, E8M0 scales"), "\(o1)")
        let (s2, _, e2) = try run(["dequantize", "--input", q + "/base", "--output", dir + "/dense"])
        #expect(s2 == 0, "\(e2)")
        let (s3, _, e3) = try run(["merge", "--base", q + "/base", "--adapter", q + "/adapter-experts", "--output", dir + "/m", "--verify"])
        #expect(s3 == 0, "\(e3)")
        let (s4, o4, e4) = try run(["merge", "--base", q + "/base", "--adapter", q + "/adapter-experts", "--output", dir + "/q", "--requantize", "keep", "--verify"])
        #expect(s4 == 0, "\(e4)")
        #expect(o4.split(separator: "\n").filter { $0.contains("requantized     model.layers.0.mlp.experts.") && $0.contains("of codes changed, delta kept") }.count == 2)
        #expect(o4.contains("3 merged tensors on 8 probes") && o4.contains("U8 ×4"))
        let (s5, o5, e5) = try run(["verify", "--base", q + "/base", "--adapter", q + "/adapter-experts", "--merged", dir + "/q"])
        #expect(s5 == 0 && o5.contains("PASS: 22 tensors (5 merged"), "\(o5)\(e5)")
        let (s6, _, e6) = try run(["merge", "--base", q + "/base", "--adapter", q + "/adapter-experts", "--output", dir + "/k", "--keep-quantized"])
        #expect(s6 == 1 && e6.contains("error: ") && e6.contains("is an mxfp4 base: write the merge back with --requantize keep (or mxfp4)"), "\(e6)")
    }

    @Test("merge then verify on the samples; verify fails on a merge of the wrong scale")
    func mergeVerify() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let (s1, o1, _) = try run(["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--output", dir + "/m", "--verify", "--quiet"])
        #expect(s1 == 0)
        #expect(o1.contains("verified"))
        let (s2, o2, _) = try run(["verify", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--merged", dir + "/m"])
        #expect(s2 == 0)
        #expect(o2.contains("PASS"))
        // A merge with weight 2 is the classic doubled scale: verify against weight 1 must fail.
        _ = try run(["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--weight", "2", "--output", dir + "/double", "--quiet"])
        let (s3, _, e3) = try run(["verify", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--merged", dir + "/double"])
        #expect(s3 == 1)
        #expect(e3.contains("error: model.layers.0.mlp.down_proj.weight"))
        // The same output again is refused; nothing is lost.
        let (s4, _, e4) = try run(["merge", "--base", "samples/tiny-llama", "--adapter", "samples/tiny-llama-lora", "--output", dir + "/m", "--quiet"])
        #expect(s4 == 1)
        #expect(e4.contains("already exists"))
    }
}

@Suite("merge gives the same bytes on every instruction set and BLAS core")
struct InstructionSetCommandLineTests {
    /// The fixture's merge command line (first adapter, weight 1), writing to `output`.
    static func mergeArguments(_ fixture: String, output: String) throws -> [String] {
        let dir = "\(root)/Tests/LoRACoreTests/Fixtures/\(fixture)"
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/case.json"))) as! [String: Any]
        let adapters = (json["adapters"] as! [String]).flatMap { ["--adapter", "\(dir)/\($0)"] }
        return ["merge", "--base", dir + "/base"] + adapters + ["--output", output, "--json"]
    }

    @Test("LORA_TOOL_ISA=scalar with OPENBLAS_CORETYPE=Prescott writes the default run's bytes (and sha256s), --verify passing",
          arguments: ["gpt2_conv1d", "llama_dora", "llama_embedding_modules_to_save", "llama_f32", "conv_peft"])
    func scalarPrescott(fixture: String) throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("lora-tool-isa-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        let (s1, json1, e1) = try run(InstructionSetCommandLineTests.mergeArguments(fixture, output: out + "/default") + ["--checksum"], in: root)
        #expect(s1 == 0, "\(e1)")
        let (s2, json2, e2) = try run(InstructionSetCommandLineTests.mergeArguments(fixture, output: out + "/scalar") + ["--verify", "--checksum"], in: root,
                                      environment: ["LORA_TOOL_ISA": "scalar", "OPENBLAS_CORETYPE": "Prescott"])
        #expect(s2 == 0, "\(e2)")
        let files = try FileManager.default.contentsOfDirectory(atPath: out + "/default").sorted()
        #expect(try FileManager.default.contentsOfDirectory(atPath: out + "/scalar").sorted() == files)
        for f in files {
            #expect(FileManager.default.contents(atPath: "\(out)/default/\(f)") == FileManager.default.contents(atPath: "\(out)/scalar/\(f)"), "\(f)")
        }
        // Both reports give every file's sha256, the same ones.
        func hashes(_ json: String) -> [String: String] {
            let o = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
            return o?["sha256"] as? [String: String] ?? [:]
        }
        #expect(hashes(json1).keys.sorted() == files.filter { !$0.hasPrefix(".") })
        #expect(hashes(json1) == hashes(json2))
    }

    @Test("An unknown LORA_TOOL_ISA value is one error line naming it, exit 1, nothing written")
    func unknownInstructionSet() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("lora-tool-isa-\(UUID().uuidString)").path
        let (status, stdout, err) = try run(InstructionSetCommandLineTests.mergeArguments("llama_f32", output: out), in: root,
                                            environment: ["LORA_TOOL_ISA": "neon"])
        #expect(status == 1)
        #expect(stdout.isEmpty)
        #expect(err.hasPrefix("error: LORA_TOOL_ISA=neon"))
        #expect(err.split(separator: "\n").count == 1)
        #expect(!FileManager.default.fileExists(atPath: out))
    }
}
