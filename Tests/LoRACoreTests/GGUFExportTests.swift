import Foundation
import GGUF
import Testing
@testable import LoRACore
@testable import SafeTensors

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("GGUFMergeFixtures").path

/// Writes the transformers model `model` (with `adapter` merged, when given) to `dir/out.gguf`.
private func export(_ model: String, adapter: String? = nil, type: GGUFOutputType = .keep, in dir: String, threads: Int = 2) throws -> String {
    var options = MergeOptions(base: model, adapters: adapter.map { [($0, 1)] } ?? [], output: dir + "/out.gguf")
    options.allowEmpty = adapter == nil
    options.ggufType = type
    options.threads = threads
    options.durable = false
    _ = try Merge.run(options)
    return dir + "/out.gguf"
}

/// A copy of the fixture model `family/hf` in `dir`, for tests that change one of its files.
private func copyModel(_ family: String, to dir: String) throws -> String {
    let copy = dir + "/model"
    try FileManager.default.copyItem(atPath: "\(fixtures)/\(family)/hf", toPath: copy)
    return copy
}

/// Rewrites the JSON object at `path` with `change` applied to its members.
private func editJSON(_ path: String, _ change: (inout [(key: String, value: JSONValue)]) -> Void) throws {
    var members = try SideFiles.readJSON(path)!.objectMembers!
    change(&members)
    try Data(JSONWriter.pretty(.object(members)).utf8).write(to: URL(fileURLWithPath: path))
}

/// Asserts that `ours` is the converter's file `theirs`: every metadata key in order with the same
/// value (but `general.name`, which the converter takes from its model-card heuristics), every
/// tensor with the same name, type, dimensions and bytes, in the same order.
func expectSameFile(_ ours: String, _ theirs: String) throws {
    let a = try GGUFFile(path: ours), b = try GGUFFile(path: theirs)
    #expect(a.header.metadata.map(\.key) == b.header.metadata.map(\.key))
    for (x, y) in zip(a.header.metadata, b.header.metadata) where x.key != "general.name" {
        #expect(x.value == y.value, "\(x.key): \(x.value.summary) vs \(y.value.summary)")
    }
    #expect(a.header.tensors.map(\.name) == b.header.tensors.map(\.name))
    for (x, y) in zip(a.header.tensors, b.header.tensors) {
        #expect(x.type == y.type && x.dims == y.dims, "\(x.name): \(x.type.name) \(x.dims) vs \(y.type.name) \(y.dims)")
        #expect(a.bytes(of: x).elementsEqual(b.bytes(of: y)), "\(x.name)")
    }
}

@Suite("Transformers models written as llama.cpp's converter writes them (convert --to gguf, merge --output X.gguf)")
struct GGUFExportTests {
    @Test("convert --to gguf equals convert_hf_to_gguf.py's file: metadata (tokenizer included) and tensors, byte for byte: llama with a Llama 2 style tokenizer.json (q/k rows permuted), qwen2, qwen3, gemma, gemma2 and gemma3 (own parameter lists, norms as 1 + w, lm_head skipped; gemma3's per-attention rope bases), phi3 (its own vocabulary reading, longrope factor tensors and attention factor) with a SentencePiece tokenizer.model",
          arguments: [("tiny", GGUFOutputType.keep, "tiny/base-f16.gguf"), ("tiny", .q8_0, "tiny/base-q8_0.gguf"),
                      ("qwen2", .f16, "qwen2/base-f16.gguf"), ("qwen3", .keep, "qwen3/base-f16.gguf"),
                      ("gemma", .keep, "gemma/base-f16.gguf"), ("gemma2", .f16, "gemma2/base-f16.gguf"),
                      ("gemma3", .keep, "gemma3/base-f16.gguf"), ("phi3", .keep, "phi3/base-f16.gguf")])
    func convertEqualsConverter(family: String, type: GGUFOutputType, reference: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try expectSameFile(try export("\(fixtures)/\(family)/hf", type: type, in: dir), "\(fixtures)/\(reference)")
    }

    @Test("merge --base MODEL --output X.gguf equals the converter run on PEFT's merge_and_unload (every tensor bit for bit, the same metadata)",
          arguments: ["tiny", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"])
    func mergeEqualsConverterOnPEFTMerge(family: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let out = try export("\(fixtures)/\(family)/hf", adapter: "\(fixtures)/\(family)/adapter", in: dir)
        try expectSameFile(out, "\(fixtures)/\(family)/converter-merged-f16.gguf")
        // And the adapter changed something: the merged file is not the base's conversion.
        let merged = try GGUFFile(path: out), base = try GGUFFile(path: "\(fixtures)/\(family)/base-f16.gguf")
        let q = try #require(merged.info(family == "phi3" ? "blk.0.attn_qkv.weight" : "blk.0.attn_q.weight"))
        #expect(!merged.bytes(of: q).elementsEqual(base.bytes(of: base.info(q.name)!)))
    }

    @Test("verify checks an export against the transformers base + adapter: the converter's own merged file passes (an independent oracle), its unmerged conversion fails on every merged tensor by name, a q8_0 export passes and fails once one byte of it changes; merge --verify passes",
          arguments: ["tiny", "qwen2", "qwen3", "gemma2", "phi3"])
    func verifyExport(family: String) throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func verify(_ merged: String) throws -> VerifyReport {
            var v = VerifyOptions(base: "\(fixtures)/\(family)/hf", adapters: [("\(fixtures)/\(family)/adapter", 1)], merged: merged)
            v.seed = 5
            v.threads = 2
            return try Verify.run(v)
        }
        let converter = try verify("\(fixtures)/\(family)/converter-merged-f16.gguf")
        #expect(converter.passed && converter.entries.filter { $0.kind == .merged }.count == (family == "tiny" ? 14 : family == "phi3" ? 4 : 7))
        let (query, value) = family == "phi3" ? ("blk.0.attn_qkv.weight", "blk.0.attn_qkv.weight") : ("blk.0.attn_q.weight", "blk.0.attn_v.weight")
        let unmerged = try verify("\(fixtures)/\(family)/base-f16.gguf")
        #expect(!unmerged.passed && unmerged.entries.filter { !$0.failures.isEmpty }.map(\.tensor).contains(query))
        #expect(unmerged.entries.filter { !$0.failures.isEmpty }.allSatisfy { $0.kind == .merged })

        var options = MergeOptions(base: "\(fixtures)/\(family)/hf", adapters: [("\(fixtures)/\(family)/adapter", 1)], output: dir + "/q.gguf")
        options.ggufType = .q8_0
        options.durable = false
        options.verify = true
        let merged = try Merge.run(options)
        #expect(merged.verification?.passed == true)
        let file = try GGUFFile(path: dir + "/q.gguf")
        let q = file.info(value)!
        #expect(q.type == .q8_0)
        var bytes = try RegularFile.readAll(dir + "/q.gguf", limit: 1 << 24)
        bytes[file.header.dataStart + Int(q.offset) + 2] ^= 0x01  // a code of the first block
        try Data(bytes).write(to: URL(fileURLWithPath: dir + "/tampered.gguf"))
        let tampered = try verify(dir + "/tampered.gguf")
        #expect(!tampered.passed && tampered.entries.filter { !$0.failures.isEmpty }.map(\.tensor) == [value])
    }

    @Test("An adapter that changes a Gemma norm (written as 1 + w) is refused on the way to GGUF, naming the tensor; nothing is written")
    func gemmaNormRefused() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let adapter = try adapterSaving("model.layers.0.input_layernorm", shape: [64], from: "\(fixtures)/gemma/adapter", in: dir)
        #expect { _ = try export("\(fixtures)/gemma/hf", adapter: adapter, in: dir) } throws: {
            (($0 as? any LocalizedError)?.errorDescription ?? "").contains("tensor 'model.layers.0.input_layernorm.weight' is a Gemma norm, written as 1 + w")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/out.gguf"))
    }

    @Test("The same bytes on 1 and 3 threads, and with bf16 weights")
    func deterministic() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var hashes: [[UInt8]] = []
        for threads in [1, 3] {
            let sub = dir + "/\(threads)"
            try FileManager.default.createDirectory(atPath: sub, withIntermediateDirectories: true)
            let path = try export("\(fixtures)/tiny/hf", adapter: "\(fixtures)/tiny/adapter", type: .bf16, in: sub, threads: threads)
            hashes.append(try RegularFile.readAll(path, limit: 1 << 24))
        }
        #expect(hashes[0] == hashes[1])
        // bf16 weights are the f16 file's values rounded to bf16 (the fixture's are bf16-exact:
        // the unmerged norms, F32 in both, and the base weights agree).
        let bf16 = try GGUFFile(path: dir + "/1/out.gguf")
        #expect(bf16.info("blk.0.attn_q.weight")?.type == .bf16 && bf16.info("blk.0.attn_norm.weight")?.type == .f32)
    }

    @Test("gguf's size label (model_weight_count_rounded_notation, 2 digits), values from gguf 0.19.0",
          arguments: [(86016, "86K"), (45000, "45K"), (500, "0.50K"), (999_999, "1000K"), (1_000_001, "1.0M"),
                      (1_235_814_400, "1.2B"), (7_241_732_096, "7.2B"), (70_553_706_496, "71B"), (1_500_000_000_000, "1.5T")])
    func sizeLabel(count: Int, label: String) {
        #expect(GGUFExportPlan.sizeLabel(count) == label)
    }

    @Test("What the converter would write differently is refused by name, and nothing is written")
    func refusals() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func refused(_ family: String, _ edit: (String) throws -> Void, type: GGUFOutputType = .keep, mentions: String) throws {
            let work = dir + "/case"
            try? FileManager.default.removeItem(atPath: work)
            try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
            let model = try copyModel(family, to: work)
            try edit(model)
            var options = MergeOptions(base: model, adapters: [], output: work + "/out.gguf")
            options.allowEmpty = true
            options.ggufType = type
            options.durable = false
            #expect { _ = try Merge.run(options) } throws: { (($0 as? any LocalizedError)?.errorDescription ?? "\($0)").contains(mentions) }
            #expect(!FileManager.default.fileExists(atPath: work + "/out.gguf"))
        }
        try refused("tiny", { try editJSON($0 + "/config.json") { m in m[m.firstIndex { $0.key == "architectures" }!].value = .array([.string("Gemma3ForConditionalGeneration")]) } },
                    mentions: "architectures 'Gemma3ForConditionalGeneration'")
        try refused("tiny", { try editJSON($0 + "/config.json") { m in
            m[m.firstIndex { $0.key == "rope_parameters" }!].value = .object([("rope_theta", .number("500000.0")), ("rope_type", .string("dynamic")), ("factor", .number("8.0"))])
        } }, mentions: "rope type 'dynamic'")
        try refused("qwen2", { try editJSON($0 + "/config.json") { m in
            m[m.firstIndex { $0.key == "rope_parameters" }!].value = .object([("rope_theta", .number("500000.0")), ("rope_type", .string("llama3")), ("factor", .number("8.0"))])
        } }, mentions: "rope type 'llama3'")
        try refused("tiny", { try editJSON($0 + "/config.json") { m in m.append(("num_local_experts", .number("8"))) } }, mentions: "'num_local_experts' (mixture of experts)")
        try refused("tiny", { try editJSON($0 + "/tokenizer.json") { m in
            let i = m.firstIndex { $0.key == "model" }!
            var model = m[i].value.objectMembers!
            model[model.firstIndex { $0.key == "byte_fallback" }!].value = .bool(false)
            m[i].value = .object(model)
        } }, mentions: "cannot encode like Hugging Face tokenizers (normalizer Prepend)")
        try refused("qwen2", { try FileManager.default.removeItem(atPath: $0 + "/tokenizer.model") }, mentions: "no tokenizer.model or tokenizer.json")
        try refused("qwen2", { try Data([0x0a, 0x40, 0x01]).write(to: URL(fileURLWithPath: $0 + "/tokenizer.model")) }, mentions: "tokenizer.model: not a SentencePiece model")
        try refused("qwen3", { _ in }, type: .q4_k, mentions: "--gguf-type q4_k")
        try refused("gemma", { try FileManager.default.removeItem(atPath: $0 + "/tokenizer.model") }, mentions: "GemmaForCausalLM needs its SentencePiece tokenizer.model")
    }

    @Test("Added tokens and special-token settings follow the converter: added_tokens.json and added_tokens_decoder entries (control when special or looking special, else user-defined with ▁ as a space), ids past the vocabulary skipped, add_bos_token/chat template from tokenizer_config.json")
    func sentencePieceAddedTokens() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = try copyModel("qwen2", to: dir)
        try Data(#"{"<extra▁a>": 60, "<past>": 999}"#.utf8).write(to: URL(fileURLWithPath: model + "/added_tokens.json"))
        try Data(#"""
            {"add_bos_token": true, "bos_token": "<s>", "chat_template": "{{ messages }}",
             "added_tokens_decoder": {"61": {"content": "<|im_end|>", "special": false}, "62": {"content": "my▁word", "special": false},
                                      "63": {"content": "<tool>", "special": true}, "500": {"content": "<far>", "special": true}}}
            """#.utf8).write(to: URL(fileURLWithPath: model + "/tokenizer_config.json"))
        let out = try GGUFFile(path: try export(model, in: dir))
        guard case let .array(_, tokens)? = out.header.value("tokenizer.ggml.tokens"),
              case let .array(_, types)? = out.header.value("tokenizer.ggml.token_type"),
              case let .array(_, scores)? = out.header.value("tokenizer.ggml.scores") else {
            Issue.record("no token arrays")
            return
        }
        #expect(tokens.count == 64)
        #expect(tokens[60] == .string("<extra▁a>") && types[60] == .int32(4) && scores[60] == .float32(-1000))
        #expect(tokens[61] == .string("<|im_end|>") && types[61] == .int32(3))
        #expect(tokens[62] == .string("my word") && types[62] == .int32(4))
        #expect(tokens[63] == .string("<tool>") && types[63] == .int32(3))
        #expect(out.header.value("tokenizer.ggml.add_bos_token") == .bool(true))
        #expect(out.header.value("tokenizer.chat_template") == .string("{{ messages }}"))
        // bos from config.json (id 1): tokenizer_config's "<s>" is not among tokenizer.json's added tokens (there is none).
        #expect(out.header.value("tokenizer.ggml.bos_token_id") == .uint32(1))
    }
}

@Suite("Byte-level BPE tokenizers: encoded as Hugging Face tokenizers encodes them, named as llama.cpp's converter names them")
struct ByteLevelBPETests {
    static let bpe = fixtures + "/bpe"

    static func json(_ path: String) throws -> JSONValue { try SideFiles.readJSON(path)! }

    @Test("The pre-tokenizer table and test text are the converter's (extracted from convert_hf_to_gguf.py by the fixture script)")
    func table() throws {
        let reference = try Self.json(Self.bpe + "/pre-tokenizers.json")
        #expect(Array(GGUFPreTokenizerTable.checkText.unicodeScalars) == Array(reference["chktxt"]!.stringValue!.unicodeScalars))
        let hashes = reference["hashes"]!.objectMembers!
        #expect(hashes.count == GGUFPreTokenizerTable.names.count)
        for (hash, name) in hashes { #expect(GGUFPreTokenizerTable.names[hash] == name.stringValue, "\(hash)") }
    }

    @Test("Token ids equal tokenizers' on the converter's test text and others (scripts, digits, contractions in any case, emoji, ZWJ, combining marks), and so does the hash",
          arguments: ["gpt2", "llama3", "qwen2"])
    func encodes(style: String) throws {
        let tokenizer = try Self.json("\(Self.bpe)/tokenizers/\(style).json")
        let reference = try Self.json(Self.bpe + "/encodings.json")[style]!
        let encoder = try ByteLevelBPE(tokenizer: tokenizer)
        let texts = reference["texts"]!.arrayValue!
        #expect(texts.count == 6)
        for pair in texts {
            let text = pair.arrayValue![0].stringValue!, ids = pair.arrayValue![1].arrayValue!.map { $0.intValue! }
            #expect(try encoder.encode(text) == ids, "\(style): \(text.debugDescription)")
        }
        let ids = try encoder.encode(GGUFPreTokenizerTable.checkText)
        #expect(SHA256.hash(Array(("[" + ids.map(String.init).joined(separator: ", ") + "]").utf8)) == reference["hash"]!.stringValue!)
    }

    @Test("Leftmost-first matching with Oniguruma's priorities: greedy and lazy repetition, ordered alternation, lookahead, case-insensitive groups, categories")
    func regex() throws {
        func pieces(_ pattern: String, _ text: String) throws -> [String] {
            let scalars = Array(text.unicodeScalars)
            return try PreTokenizerRegex(pattern).splitPieces(scalars).map { String(String.UnicodeScalarView(scalars[$0.range])) }
        }
        #expect(try pieces(#"\s+(?!\S)|\s+"#, "a   b") == ["a", "  ", " ", "b"])
        #expect(try pieces(#"(?i:'s|'t)| ?\p{L}+"#, "it'S ſ'ſ") == ["it", "'S", " ſ", "'ſ"])
        #expect(try pieces(#"\p{N}{1,3}"#, "1234567") == ["123", "456", "7"])
        #expect(try pieces(#"a+?b|a"#, "aab") == ["aab"])
        #expect(try pieces(#"[^\r\n\p{L}\p{N}]?\p{L}+"#, "(hello)") == ["(hello", ")"])
        for bad in [#"\p{Han}"#, #"(?<=a)b"#, #"a++"#, #"^a"#, #"(a"#] {
            #expect(throws: PreTokenizerRegex.Unsupported.self) { _ = try PreTokenizerRegex(bad) }
        }
    }

    @Test("A tiny Llama with a Llama 3 style tokenizer written as the converter writes it: model gpt2, the named pre-tokenizer, tokens, types, merges, BOS added by the template, tensors")
    func export() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let model = Self.bpe + "/hf"
        let checkpoint = try Checkpoint(path: model)
        // The tiny tokenizer's hash is in no table: the fixture's converter was told "llama-bpe" too.
        let hash = try Self.json(Self.bpe + "/encodings.json")["llama3"]!["hash"]!.stringValue!
        #expect { _ = try GGUFExportPlan(directory: model, model: checkpoint, type: .f16) } throws: {
            (($0 as? any LocalizedError)?.errorDescription ?? "").contains("a BPE pre-tokenizer llama.cpp does not know (hash \(hash)")
        }
        let plan = try GGUFExportPlan(directory: model, model: checkpoint, type: .f16, extraPreTokenizers: [hash: "llama-bpe"])
        let context = try RunContext(threads: 2, instructionSet: nil, allowOverflow: false, progress: nil)
        let sink = try GGUFSink(export: plan, stream: TensorStream(model: checkpoint), context: context)
        _ = try sink.write(to: dir + "/out.gguf", durable: false)
        try expectSameFile(dir + "/out.gguf", Self.bpe + "/base-f16.gguf")
        let out = try GGUFFile(path: dir + "/out.gguf")
        #expect(out.header.value("tokenizer.ggml.model") == .string("gpt2") && out.header.value("tokenizer.ggml.pre") == .string("llama-bpe"))
        #expect(out.header.value("tokenizer.ggml.add_bos_token") == .bool(true) && out.header.value("tokenizer.ggml.scores") == nil)
        // Llama 3.2's rope: the converter's rope_freqs, first, with three of its 32 factors in the smoothed band.
        let freqs = try #require(out.header.tensors.first)
        #expect(freqs.name == "rope_freqs.weight" && freqs.dims == [32] && freqs.type == .f32)
        let factors = out.bytes(of: freqs).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        #expect(factors.filter { $0 != 1 && $0 != 32 }.count == 3)
    }
}
