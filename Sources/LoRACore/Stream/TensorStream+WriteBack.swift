extension TensorStream {
    /// This stream written back in its base's quantized scheme (the requantize passes): a source of
    /// type `Quantized` (a dequantized weight nothing changed) becomes its stored tensors, byte for
    /// byte; a `MergedTensor` that started from one becomes `requantized(name, merge, start)`; other
    /// tensors pass through. config.json keeps `quantization_config`.
    func writtenBack<Quantized: TensorSource>(
        _: Quantized.Type, stored: (Quantized) -> [(name: String, source: any TensorSource)],
        requantized: (String, MergedTensor, Quantized) -> [(name: String, source: any TensorSource)]
    ) -> TensorStream {
        var out: [(name: String, source: any TensorSource)] = []
        for (name, source) in tensors {
            if let q = source as? Quantized {
                out += stored(q)
            } else if let m = source as? MergedTensor, let q = m.start as? Quantized {
                out += requantized(name, m, q)
            } else {
                out.append((name, source))
            }
        }
        var side = sideFiles
        side?.dropQuantization = false
        return with(out, sideFiles: side)
    }
}
