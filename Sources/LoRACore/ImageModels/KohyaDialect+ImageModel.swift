import Foundation

extension KohyaDialect {
    /// Writes an image-model LoRA's modules under the names they have (`lora_unet_…`, `lora_te1_…`,
    /// ComfyUI's `diffusion_model.…`): fp32 `lora_down`/`lora_up` (4-D for LoCon convolutions) and an
    /// fp32 `.alpha` each (the module's α), with `source`'s `__metadata__`, `ss_network_dim` and
    /// `ss_network_alpha` set as sd-scripts sets them (the rank and alpha when every module has the
    /// same, else `Dynamic`) and without `sshs_model_hash`/`sshs_legacy_hash`, which hash the source's
    /// tensors. `resize` and `combine` of kohya image LoRAs write this.
    /// - Throws: `LoRACoreError.unsupportedAdapter` for what a kohya LoRA cannot express (DoRA
    ///   magnitudes, biases); `SafeTensorsError` writing.
    static func writeImageModel(_ factors: [LoRAFactors], source: Adapter, output: String, force: Bool, zstdLevel: Int32?) throws {
        try Convert.refuse(factors, adapter: source, into: "kohya LoRA")
        var tensors: [AdapterSink.Tensor] = []
        for f in factors {
            let m = f.module
            tensors.append(.init(name: m.module + ".lora_down.weight", dtype: .float32, shape: m.factorShapes.a) { AdapterSink.floatBytes(f.a) })
            tensors.append(.init(name: m.module + ".lora_up.weight", dtype: .float32, shape: m.factorShapes.b) { AdapterSink.floatBytes(f.b) })
            let alpha = Float(m.alpha)
            tensors.append(.init(name: m.module + ".alpha", dtype: .float32, shape: []) { AdapterSink.floatBytes([alpha]) })
        }
        // The written (fp32) alphas; the network module stays the source's.
        let network = networkMetadata(ranks: factors.map(\.module.rank), alphas: factors.map { Double(Float($0.module.alpha)) }, flux: false)
            .filter { $0.key != "ss_network_module" }
        var metadata = (source.checkpoint.metadata ?? []).filter { !["sshs_model_hash", "sshs_legacy_hash"].contains($0.key) }
        for (key, value) in network {
            if let i = metadata.firstIndex(where: { $0.key == key }) { metadata[i].value = value } else { metadata.append((key, value)) }
        }
        try writeOutput(tensors, metadata: metadata, weightsName: "adapter.safetensors", output: output, force: force, zstdLevel: zstdLevel)
    }
}
