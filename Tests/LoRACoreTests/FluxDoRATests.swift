import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

/// scripts/make-fixtures.py group `flux-dora`: `lora/` is a diffusers-format DoRA LoRA (PEFT `use_dora`,
/// `lora_magnitude_vector`) on flux/transformer, on parts of fused BFL tensors (q/k/v of `img_attn.qkv`, one
/// third of `txt_attn.qkv`, all of `linear1` and its MLP rows alone), one-to-one modules and `norm_out.linear`;
/// `merged-single.safetensors` is diffusers' fuse on an fp32 copy (PEFT's DoRA), rounded once to bf16, in BFL names.
/// Each diffusers weight of the Flux transformer (`transformer_blocks.0.attn.to_q.weight`) → the bytes of
/// its rows of the BFL single file `single` (`FluxNameMap(bfl:prefix:)`, norm_out's halves swapped back).
func diffusersRows(of single: Checkpoint) throws -> [String: [UInt8]] {
    var out: [String: [UInt8]] = [:]
    for (bfl, parts) in try FluxNameMap(bfl: single, prefix: "").parts {
        let fused = Array(try single.bytes(of: bfl + ".weight")), rowBytes = fused.count / single.info(bfl + ".weight")!.shape[0]
        for p in parts { out[p.module + ".weight"] = p.rows.flatMap { fused[($0.lowerBound * rowBytes)..<($0.upperBound * rowBytes)] } }
    }
    return out
}

@Suite("Image models: PEFT DoRA (diffusers format) on parts of Flux's fused BFL tensors")
struct FluxDoRATests {
    static let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/flux-dora").path
    static let lora = dir + "/lora"
    static let oracle = dir + "/merged-single.safetensors"

    @Test("lora/ into single.safetensors is merged-single.safetensors byte for byte (diffusers' DoRA fuse); into transformer/ every tensor is its BFL rows of it")
    func mergesAsDiffusers() throws {
        let out = temporaryDirectory()
        let report = try mergeImageModel(fluxSingle, [Self.lora], into: out + "/s.safetensors")
        // 12 DoRA modules on 6 BFL tensors; norm_out's halves two updates of one.
        #expect(report.files == ["s.safetensors"] && report.mergedTensors == 7)
        #expect(FileManager.default.contents(atPath: out + "/s.safetensors") == FileManager.default.contents(atPath: Self.oracle))
        let base = try Checkpoint(path: fluxSingle), expected = try Checkpoint(path: Self.oracle)
        #expect(try base.names.filter { try Array(base.bytes(of: $0)) != Array(expected.bytes(of: $0)) }.count == 7)
        _ = try mergeImageModel(fluxTransformer, [Self.lora], into: out + "/t")
        let folder = try Checkpoint(path: out + "/t"), rows = try diffusersRows(of: expected)
        for (name, bytes) in rows { #expect(Array(try folder.bytes(of: name)) == bytes, "\(name)") }
        // Every 2-D weight of the transformer is a part of a BFL module.
        #expect(Set(rows.keys) == Set(folder.names.filter { folder.info($0)!.shape.count == 2 }) && rows.count == 50)
    }

    @Test("verify passes the DoRA merge into the single file and names the fused tensor of a changed element; inspect reports DoRA")
    func verifyAndInspect() throws {
        var v = VerifyOptions(base: fluxSingle, adapters: [(Self.lora, 1)], merged: Self.oracle)
        v.threads = 2
        #expect(try Verify.run(v).passed)
        let out = temporaryDirectory()
        for tensor in ["double_blocks.0.img_attn.qkv.weight", "single_blocks.0.linear1.weight"] {
            try rewriteSafeTensors(Self.oracle, to: out + "/\(tensor).safetensors", metadata: [("format", "pt")], flip: tensor)
            v.merged = out + "/\(tensor).safetensors"
            #expect(try Verify.run(v).failures.map(\.tensor) == [tensor])
        }
        #expect(try Inspect.run(path: Self.lora).adapter?.dora == true)
    }

    @Test("A DoRA part and another adapter on the same rows, LyCORIS dora_scale on a part, a magnitude use_dora does not announce, and a conversion to kohya or diffusers are refused by name")
    func refusals() throws {
        let out = temporaryDirectory()
        #expect {
            try mergeImageModel(fluxSingle, [Self.lora, flux + "/lora"], into: out + "/two.safetensors")
        } throws: { error in "\(error)".contains("DoRA adapters cannot be combined") }
        // A LoCon with dora_scale (1, in): its column norms would span the part's rows only.
        let toQ = "lora_transformer_transformer_blocks_0_attn_to_q"
        func values(_ n: Int) -> [Float] { (0..<n).map { Float($0 % 7) / 20 + 0.1 } }
        try ChunkedMergeTests.write([(toQ + ".lora_down.weight", [2, 16], values(32)), (toQ + ".lora_up.weight", [16, 2], values(32)),
                                     (toQ + ".dora_scale", [1, 16], values(16))], to: out + "/locon.safetensors")
        #expect {
            try mergeImageModel(fluxSingle, [out + "/locon.safetensors"], into: out + "/locon-out.safetensors")
        } throws: { error in "\(error)".contains(toQ) && "\(error)".contains("LyCORIS dora_scale") }
        let file = Self.lora + "/pytorch_lora_weights.safetensors"
        let text = try Checkpoint(path: file).metadata!.first { $0.key == "lora_adapter_metadata" }!.value
        #expect(text.contains(#""transformer.use_dora": true"#))
        try rewriteSafeTensors(file, to: out + "/x.safetensors",
                               metadata: [("format", "pt"), ("lora_adapter_metadata", text.replacingOccurrences(of: #""transformer.use_dora": true"#, with: #""transformer.use_dora": false"#))])
        #expect {
            try Adapter(path: out + "/x.safetensors")
        } throws: { error in "\(error)".contains("transformer.norm_out.linear") && "\(error)".contains("does not set transformer.use_dora") }
        for format in [Adapter.Format.kohya, .diffusers] {
            #expect {
                try Convert.run(ConvertOptions(adapter: Self.lora, to: format, output: out + "/c-\(format).safetensors"))
            } throws: { error in "\(error)".contains("cannot express DoRA magnitudes") }
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).sorted() == ["locon.safetensors", "x.safetensors"])
    }
}
