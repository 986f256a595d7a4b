import Foundation
import LoRAKernels
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("SDXL single-file (sgm) names ↔ diffusers component names, fused rows")
struct SGMNameMapTests {
    @Test("Every tensor of the SDXL pipeline's four components reads, through the map, the single file's bytes: whole, a row third of OpenCLIP's in_proj, or text_projection transposed; every key is used")
    func bothWaysOnTheFixture() throws {
        let single = try Checkpoint(path: sdxlSingle)
        let map = try LDMNameMap(keys: single.names, path: sdxlSingle)
        #expect(map.components == ["text_encoder", "text_encoder_2", "unet", "vae"])
        #expect(map.layersPerBlock == 1 && map.blocks == 2)
        var used = Set<String>()
        for (component, file) in [("unet", "unet/diffusion_pytorch_model.safetensors"), ("text_encoder", "text_encoder/model.safetensors"),
                                  ("text_encoder_2", "text_encoder_2/model.safetensors"), ("vae", "vae/diffusion_pytorch_model.safetensors")] {
            let folder = try Checkpoint(path: sdxlPipeline + "/" + file)
            let store = LDMComponentStore(single, map: map, component: component)
            #expect(store.names == folder.names, "\(component)")
            for name in folder.names {
                guard let part = map.part(component: component, name: name) else {
                    Issue.record("\(component).\(name): no key")
                    continue
                }
                used.insert(part.key)
                // The VAE's mid-block attention weights keep LDM's [C, C, 1, 1].
                let shape = store.info(name)?.shape ?? []
                #expect((component == "vae" && name.contains("mid_block.attentions") ? Array(shape.prefix(2)) : shape) == folder.info(name)!.shape, "\(component).\(name)")
                if part.transposed {
                    let shape = folder.info(name)!.shape
                    let mine = try TensorData.floats(single, part.key), theirs = try TensorData.floats(folder, name)
                    #expect(mine == LoRAFactors.transpose(theirs, rows: shape[0], cols: shape[1]), "\(name)")
                    #expect(throws: LoRACoreError.self) { try store.bytes(of: name) }
                    continue
                }
                #expect(Array(try store.bytes(of: name)) == Array(try folder.bytes(of: name)), "\(component).\(name) → \(part.key)")
                var copy = [UInt8](repeating: 0, count: folder.info(name)!.byteCount)
                try copy.withUnsafeMutableBytes { try store.read(name, bytes: 0..<$0.count, into: $0.baseAddress!) }
                #expect(copy == Array(try folder.bytes(of: name)), "\(component).\(name) read")
            }
        }
        #expect(used == Set(single.names))
        let fused = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
        #expect(map.diffusersNames(of: fused).map(\.name) == ["text_model.encoder.layers.0.self_attn.q_proj.weight",
                                                               "text_model.encoder.layers.0.self_attn.k_proj.weight",
                                                               "text_model.encoder.layers.0.self_attn.v_proj.weight"])
        #expect(map.diffusersName(of: fused) == nil && map.key(component: "text_encoder_2", name: "text_model.encoder.layers.0.self_attn.k_proj.weight") == nil)
        #expect(map.part(component: "text_encoder_2", name: "text_model.encoder.layers.0.self_attn.k_proj.weight")?.rows(of: [36, 12]) == 12..<24)
        #expect(map.part(component: "text_encoder_2", name: "text_model.encoder.layers.0.self_attn.v_proj.bias")?.rows(of: [36]) == 24..<36)
    }

    @Test("The sgm rules: label_emb → add_embedding, the CLIP-L and OpenCLIP prefixes, OpenCLIP's renames; logit_scale has no name")
    func rules() throws {
        let map = try LDMNameMap(keys: try Checkpoint(path: sdxlSingle).names + ["conditioner.embedders.1.model.logit_scale"], path: sdxlSingle)
        let pairs = [
            ("model.diffusion_model.label_emb.0.0.weight", "unet", "add_embedding.linear_1.weight"),
            ("model.diffusion_model.label_emb.0.2.bias", "unet", "add_embedding.linear_2.bias"),
            ("model.diffusion_model.input_blocks.3.1.transformer_blocks.1.attn2.to_k.weight", "unet", "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k.weight"),
            ("conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight", "text_encoder", "encoder.layers.0.mlp.fc1.weight"),
            ("conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_fc.weight", "text_encoder_2", "text_model.encoder.layers.0.mlp.fc1.weight"),
            ("conditioner.embedders.1.model.transformer.resblocks.0.mlp.c_proj.bias", "text_encoder_2", "text_model.encoder.layers.0.mlp.fc2.bias"),
            ("conditioner.embedders.1.model.transformer.resblocks.0.attn.out_proj.weight", "text_encoder_2", "text_model.encoder.layers.0.self_attn.out_proj.weight"),
            ("conditioner.embedders.1.model.transformer.resblocks.0.ln_2.weight", "text_encoder_2", "text_model.encoder.layers.0.layer_norm2.weight"),
            ("conditioner.embedders.1.model.positional_embedding", "text_encoder_2", "text_model.embeddings.position_embedding.weight"),
            ("conditioner.embedders.1.model.ln_final.bias", "text_encoder_2", "text_model.final_layer_norm.bias"),
        ]
        for (key, component, name) in pairs {
            #expect(map.diffusersName(of: key).map { "\($0.component).\($0.name)" } == "\(component).\(name)", "\(key)")
            #expect(map.key(component: component, name: name) == key)
        }
        #expect(map.diffusersNames(of: "conditioner.embedders.1.model.logit_scale").isEmpty)
        #expect(map.part(component: "text_encoder_2", name: "text_projection.weight") == FileTensorPart(key: "conditioner.embedders.1.model.text_projection", transposed: true))
    }

    @Test("kohya's sgm UNet names read as diffusers names (SDXL's own L = 2 and the fixture's L = 1); diffusers-form names are left alone")
    func kohyaSGMNames() {
        let cases: [(String, Int, String?)] = [
            ("input_blocks_4_1_transformer_blocks_0_attn1_to_q", 2, "down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"),
            ("input_blocks_3_1_transformer_blocks_1_attn2_to_k", 1, "down_blocks_1_attentions_0_transformer_blocks_1_attn2_to_k"),
            ("input_blocks_1_0_in_layers_2", 1, "down_blocks_0_resnets_0_conv1"),
            ("input_blocks_3_0_skip_connection", 1, "down_blocks_1_resnets_0_conv_shortcut"),
            ("input_blocks_6_0_op", 2, "down_blocks_1_downsamplers_0_conv"),
            ("input_blocks_0_0", 2, "conv_in"),
            ("middle_block_0_emb_layers_1", 2, "mid_block_resnets_0_time_emb_proj"),
            ("middle_block_1_proj_in", 2, "mid_block_attentions_0_proj_in"),
            ("output_blocks_2_1_conv", 1, "up_blocks_1_upsamplers_0_conv"),
            ("output_blocks_5_0_out_layers_3", 2, "up_blocks_1_resnets_2_conv2"),
            ("label_emb_0_0", 2, "add_embedding_linear_1"),
            ("time_embed_2", 2, "time_embedding_linear_2"),
            ("out_2", 2, "conv_out"),
            ("down_blocks_0_resnets_0_conv1", 1, nil),
            ("time_embedding_linear_1", 1, nil),
            ("input_blocks_x_1_proj_in", 1, nil),
        ]
        for (kohya, L, diffusers) in cases {
            #expect(LDMNameMap.diffusersFlatUNetName(ofKohya: kohya, layersPerBlock: L) == diffusers, "\(kohya)")
        }
    }

    @Test("A row part is its share of the rows: q/k/v thirds, Flux linear1's [1, 1, 1, 4], none when the ratio does not divide")
    func rowParts() {
        #expect(FileTensorPart.Rows(index: 1, weights: [1, 1, 1]).range(of: 36) == 12..<24)
        #expect(FileTensorPart.Rows(index: 3, weights: [1, 1, 1, 4]).range(of: 70) == 30..<70)
        #expect(FileTensorPart.Rows(index: 0, weights: [1, 1, 1]).range(of: 35) == nil)
        #expect(FileTensorPart(key: "w").rows(of: [5, 2]) == 0..<5)
    }

    @Test("RowRangeLoRA changes its rows only, each as the merge kernel merges the separate tensor (bit for bit), whatever the blocks; apply64 agrees")
    func rowRangeUpdate() throws {
        let d = 6, cols = 5, r = 2, scale = 1.5
        var gen = SplitMix64(seed: 7)
        func values(_ n: Int) -> [Float] { (0..<n).map { _ in Float(Double(gen.next() % 2001) / 1000 - 1) } }
        let a = values(r * cols), b = values(d * r), w = values(3 * d * cols)
        let update = RowRangeLoRA.Loaded(a: a, b: b, rows: d..<(2 * d), rank: r, scale: scale)
        var whole = w
        update.apply(toRows: 0, count: 3 * d, cols: cols, block: &whole, weight: 1)
        // The k third as its own tensor, through the kernel.
        var separate = Array(w[(d * cols)..<(2 * d * cols)])
        separate.withUnsafeMutableBytes { s in
            b.withUnsafeBufferPointer { bp in
                a.withUnsafeBufferPointer { ap in
                    _ = FusedMerge.rows(UnsafeRawBufferPointer(s), input: .f32, into: s, output: .f32, rows: d, cols: cols, b: bp, rank: r, a: ap,
                                        leadingA: cols, coefficient: Float(scale), using: .scalar)
                }
            }
        }
        #expect(Array(whole[(d * cols)..<(2 * d * cols)]) == separate)
        #expect(Array(whole[..<(d * cols)]) == Array(w[..<(d * cols)]) && Array(whole[(2 * d * cols)...]) == Array(w[(2 * d * cols)...]))
        #expect(separate != Array(w[(d * cols)..<(2 * d * cols)]))
        // Blocks of 4 rows straddle the third's edges.
        var blocks = w
        for r0 in stride(from: 0, to: 3 * d, by: 4) {
            let n = min(4, 3 * d - r0)
            var block = Array(blocks[(r0 * cols)..<((r0 + n) * cols)])
            update.apply(toRows: r0, count: n, cols: cols, block: &block, weight: 1)
            blocks.replaceSubrange((r0 * cols)..<((r0 + n) * cols), with: block)
        }
        #expect(blocks == whole)
        var w64 = w.map(Double.init)
        update.apply64(toRows: 0, count: 3 * d, cols: cols, block: &w64, weight: 1)
        #expect(zip(w64, whole).allSatisfy { abs($0 - Double($1)) < 1e-5 })
    }

    @Test("sgmUNetName inverts the map: every module of the SDXL fixture's UNet gets its single-file key, and SDXL's own L = 2 names its blocks as sd-scripts does")
    func sgmNamesOfDiffusersModules() throws {
        let single = try Checkpoint(path: sdxlSingle), map = try LDMNameMap(keys: single.names, path: sdxlSingle)
        let unet = try Checkpoint(path: sdxlPipeline + "/unet/diffusion_pytorch_model.safetensors").names
        let up = LDMNameMap.upBlocksWithAttention(diffusersNames: unet)
        #expect(up == [0] && LDMNameMap.layersPerBlock(diffusersNames: unet) == 1)
        for name in unet {
            let (module, suffix) = (String(name[..<name.lastIndex(of: ".")!]), String(name[name.lastIndex(of: ".")!...]))
            let sgm = LDMNameMap.sgmUNetName(ofDiffusers: module, layersPerBlock: 1, upBlocksWithAttention: up)
            #expect(sgm.map { "model.diffusion_model." + $0 + suffix } == map.key(component: "unet", name: name), "\(name)")
        }
        #expect(LDMNameMap.sgmUNetName(ofDiffusers: "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", layersPerBlock: 2, upBlocksWithAttention: [0, 1])
            == "input_blocks.4.1.transformer_blocks.0.attn1.to_q")
        #expect(LDMNameMap.sgmUNetName(ofDiffusers: "up_blocks.2.upsamplers.0.conv", layersPerBlock: 2, upBlocksWithAttention: [0, 1]) == "output_blocks.8.1.conv")
        #expect(LDMNameMap.sgmUNetName(ofDiffusers: "down_blocks.0.resnets.7.conv9", layersPerBlock: 2, upBlocksWithAttention: []) == nil)
    }
}
