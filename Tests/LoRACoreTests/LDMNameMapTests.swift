import Foundation
import Testing
@testable import LoRACore
@testable import SafeTensors

@Suite("LDM single-file names ↔ diffusers component names (SD 1.x)")
struct LDMNameMapTests {
    @Test("Every tensor of the pipeline's unet, text_encoder and vae maps to the single file's key holding the same bytes, and every key maps back")
    func bothWaysOnTheFixture() throws {
        let single = try Checkpoint(path: sd1Single)
        let map = try LDMNameMap(keys: single.names, path: sd1Single)
        #expect(map.components == ["text_encoder", "unet", "vae"])
        #expect(map.layersPerBlock == 1 && map.blocks == 2)
        var mapped = Set<String>()
        for (component, file) in [("unet", "unet/diffusion_pytorch_model.safetensors"), ("text_encoder", "text_encoder/model.safetensors"),
                                  ("vae", "vae/diffusion_pytorch_model.safetensors")] {
            let folder = try Checkpoint(path: sd1Pipeline + "/" + file)
            #expect(map.tensors(of: component).map(\.name) == folder.names, "\(component)")
            for name in folder.names {
                guard let key = map.part(component: component, name: name)?.key else {
                    Issue.record("\(component).\(name): no key")
                    continue
                }
                #expect(map.diffusersName(of: key)! == (component, name))
                #expect(Array(try single.bytes(of: key)) == Array(try folder.bytes(of: name)), "\(component).\(name) → \(key)")
                mapped.insert(key)
            }
        }
        #expect(mapped == Set(single.names))
    }

    @Test("The rules: resnet renames, downsamplers, upsamplers after attentions, the middle block, VAE attention and reversed decoder blocks")
    func rules() throws {
        let map = try LDMNameMap(keys: try Checkpoint(path: sd1Single).names, path: sd1Single)
        let pairs = [
            ("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", "unet", "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"),
            ("model.diffusion_model.input_blocks.1.0.in_layers.2.weight", "unet", "down_blocks.0.resnets.0.conv1.weight"),
            ("model.diffusion_model.input_blocks.2.0.op.weight", "unet", "down_blocks.0.downsamplers.0.conv.weight"),
            ("model.diffusion_model.input_blocks.3.0.skip_connection.bias", "unet", "down_blocks.1.resnets.0.conv_shortcut.bias"),
            ("model.diffusion_model.middle_block.2.emb_layers.1.weight", "unet", "mid_block.resnets.1.time_emb_proj.weight"),
            ("model.diffusion_model.middle_block.1.proj_out.weight", "unet", "mid_block.attentions.0.proj_out.weight"),
            ("model.diffusion_model.output_blocks.1.1.conv.weight", "unet", "up_blocks.0.upsamplers.0.conv.weight"),
            ("model.diffusion_model.output_blocks.3.1.transformer_blocks.0.ff.net.2.weight", "unet", "up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2.weight"),
            ("model.diffusion_model.output_blocks.3.0.out_layers.3.weight", "unet", "up_blocks.1.resnets.1.conv2.weight"),
            ("model.diffusion_model.time_embed.2.bias", "unet", "time_embedding.linear_2.bias"),
            ("model.diffusion_model.out.0.weight", "unet", "conv_norm_out.weight"),
            ("cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight", "text_encoder", "encoder.layers.0.mlp.fc1.weight"),
            ("first_stage_model.decoder.up.0.block.1.conv2.weight", "vae", "decoder.up_blocks.0.resnets.1.conv2.weight"),
            ("first_stage_model.encoder.mid.attn_1.proj_out.weight", "vae", "encoder.mid_block.attentions.0.to_out.0.weight"),
            ("first_stage_model.decoder.norm_out.bias", "vae", "decoder.conv_norm_out.bias"),
            ("first_stage_model.post_quant_conv.weight", "vae", "post_quant_conv.weight"),
        ]
        for (key, component, name) in pairs {
            #expect(map.diffusersName(of: key).map { "\($0.component).\($0.name)" } == "\(component).\(name)", "\(key)")
            #expect(map.key(component: component, name: name) == key)
        }
        // SD 1.5's own layout: 4 blocks of 2 layers, attention before the upsampler in up blocks 1–2.
        #expect(LDMNameMap.unetName("output_blocks.8.2.conv.weight", layersPerBlock: 2) == "up_blocks.2.upsamplers.0.conv.weight")
        #expect(LDMNameMap.unetName("output_blocks.2.1.conv.bias", layersPerBlock: 2) == "up_blocks.0.upsamplers.0.conv.bias")
        #expect(LDMNameMap.unetName("input_blocks.9.0.op.weight", layersPerBlock: 2) == "down_blocks.2.downsamplers.0.conv.weight")
        #expect(LDMNameMap.unetName("input_blocks.11.0.in_layers.0.weight", layersPerBlock: 2) == "down_blocks.3.resnets.1.norm1.weight")
    }

    @Test("A key outside the three SD 1.x prefixes, or one the rules cannot name, is refused by name")
    func foreignKeysRefused() {
        #expect(throws: LoRACoreError.invalidRequest("x: tensor 'first_stage_model.encoder.down.0.attn.0.q.weight' has no diffusers vae name (a layout this map does not know)")) {
            try LDMNameMap(keys: ["model.diffusion_model.input_blocks.0.0.weight", "first_stage_model.encoder.down.0.attn.0.q.weight"], path: "x")
        }
        #expect(throws: LoRACoreError.invalidRequest("x: tensor 'model.diffusion_model.input_blocks.1.0.in_layers.1.weight' has no diffusers unet name (a layout this map does not know)")) {
            try LDMNameMap(keys: ["model.diffusion_model.input_blocks.1.0.in_layers.1.weight"], path: "x")
        }
        #expect(throws: LoRACoreError.invalidRequest("x: tensor 'conditioner.embedders.2.model.ln_final.weight' is not under model.diffusion_model., cond_stage_model.transformer., cond_stage_model.model., conditioner.embedders.0.transformer., conditioner.embedders.1.model., conditioner.embedders.0.model., first_stage_model.: only SD 1.x, SD 2.x and SDXL single files are mapped to diffusers names yet")) {
            try LDMNameMap(keys: ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.2.model.ln_final.weight"], path: "x")
        }
        // The refiner's OpenCLIP (conditioner.embedders.0.model.) is text_encoder_2, as the base's second encoder is: a file with both is refused.
        #expect(throws: LoRACoreError.invalidRequest("x: tensors 'conditioner.embedders.0.model.ln_final.weight' and 'conditioner.embedders.1.model.ln_final.weight' both map to diffusers text_encoder_2 tensor 'text_model.final_layer_norm.weight'")) {
            try LDMNameMap(keys: ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.0.model.ln_final.weight", "conditioner.embedders.1.model.ln_final.weight"], path: "x")
        }
        #expect(throws: LoRACoreError.invalidRequest("x: tensor 'conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj' has no diffusers text_encoder_2 name (a layout this map does not know)")) {
            try LDMNameMap(keys: ["model.diffusion_model.input_blocks.0.0.weight", "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj"], path: "x")
        }
    }
}
