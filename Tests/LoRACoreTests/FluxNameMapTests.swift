import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

/// scripts/make-fixtures.py group `flux`: a tiny bf16 FluxTransformer2DModel (`transformer/`), the same
/// weights as a BFL single file (loaded back by diffusers' `from_single_file`), a kohya Flux LoRA, the
/// same LoRA in diffusers names, and diffusers' fuse of it on an fp32 copy rounded once to bf16.
let flux = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("ImageFixtures/flux").path
let fluxTransformer = flux + "/transformer"
let fluxSingle = flux + "/single.safetensors"

/// Copies `source` keeping the tensors `keep` accepts, renamed by `rename`; `substitute` gives a
/// written tensor the bytes of another tensor of `source` (same dtype and shape).
func rewriteTensors(_ source: String, to destination: String, keep: (String) -> Bool = { _ in true }, rename: (String) -> String = { $0 },
                    substitute: [String: String] = [:]) throws {
    let ckpt = try Checkpoint(path: source)
    let names = ckpt.names.filter(keep)
    let infos = names.map { n -> TensorInfo in
        let i = ckpt.info(n)!
        return TensorInfo(name: rename(n), dtype: i.dtype, shape: i.shape)
    }
    let w = try SafeTensorsWriter(path: destination, tensors: infos, metadata: ckpt.metadata)
    let source = Dictionary(uniqueKeysWithValues: names.map { (rename($0), $0) })
    while let t = w.nextTensor { try w.write(t.name, bytes: try ckpt.bytes(of: substitute[t.name] ?? source[t.name]!)) }
    try w.finish()
}

@Suite("FluxNameMap: BFL ↔ diffusers Flux transformer names")
struct FluxNameMapTests {
    @Test("Every BFL weight of single.safetensors is its diffusers parts' rows in the map's order (norm_out's halves swapped), and every diffusers weight is one part")
    func mapMatchesTheFiles() throws {
        let diffusers = try Checkpoint(path: fluxTransformer), bfl = try Checkpoint(path: fluxSingle)
        let map = try FluxNameMap(diffusers: diffusers)
        // BFL → diffusers: every 2-D BFL weight has an entry; its parts' bytes are its rows.
        let bflWeights = bfl.names.filter { $0.hasSuffix(".weight") && bfl.info($0)!.shape.count == 2 }
        #expect(Set(map.parts.keys.map { $0 + ".weight" }) == Set(bflWeights))
        #expect(map.parts["double_blocks.1.img_attn.qkv"]?.map(\.module) == ["transformer_blocks.1.attn.to_q", "transformer_blocks.1.attn.to_k", "transformer_blocks.1.attn.to_v"])
        #expect(map.parts["single_blocks.0.linear1"]?.map(\.rows) == [[0..<16], [16..<32], [32..<48], [48..<112]])
        #expect(map.parts["final_layer.adaLN_modulation.1"]?.map(\.rows) == [[16..<32, 0..<16]])
        for (module, parts) in map.parts {
            let whole = Array(try bfl.bytes(of: module + ".weight")), cols = bfl.info(module + ".weight")!.shape[1]
            for p in parts {
                let rowBytes = cols * 2
                let expected = p.rows.flatMap { whole[($0.lowerBound * rowBytes)..<($0.upperBound * rowBytes)] }
                #expect(Array(try diffusers.bytes(of: p.module + ".weight")) == expected, "\(module) → \(p.module)")
            }
        }
        // diffusers → BFL: every 2-D diffusers weight is exactly one part of one BFL module.
        for name in diffusers.names where name.hasSuffix(".weight") && diffusers.info(name)!.shape.count == 2 {
            let module = String(name.dropLast(".weight".count))
            #expect(map.bfl(ofDiffusers: module) != nil, "\(module)")
        }
        #expect(map.bfl(ofDiffusers: "single_transformer_blocks.1.proj_mlp")?.bfl == "single_blocks.1.linear1")
    }

    @Test("kohya names are BFL modules with _ for .: every module of kohya.safetensors maps, and nothing else does")
    func kohyaNames() throws {
        let map = try FluxNameMap(diffusers: try Checkpoint(path: fluxTransformer))
        let kohya = try Adapter(path: flux + "/kohya.safetensors")
        for m in kohya.modules { #expect(map.bflModule(ofKohya: String(m.module.dropFirst("lora_unet_".count))) != nil, "\(m.module)") }
        #expect(map.bflModule(ofKohya: "double_blocks_0_img_attn_qkv") == "double_blocks.0.img_attn.qkv")
        #expect(map.bflModule(ofKohya: "final_layer_adaLN_modulation_1") == "final_layer.adaLN_modulation.1")
        #expect(map.bflModule(ofKohya: "double_blocks_2_img_attn_qkv") == nil)  // the model has 2 double blocks
        #expect(map.bflModule(ofKohya: "transformer_blocks_0_attn_to_q") == nil)
    }
}
