/// Rows of another update's ΔW: the update a diffusers module takes from a LyCORIS LoHa or LoKr
/// trained on a fused BFL Flux module (`lora_unet_double_blocks_0_img_attn_qkv.hada_w1_a` → `attn.to_q`,
/// `to_k`, `to_v`; `FluxNameMap.diffusersModules`), whose weight is some of the fused weight's rows.
///
/// Row `i` of the base tensor is row `rows`-concatenated[i] of the inner update (Flux's
/// `norm_out.linear` is two blocks, its halves swapped in BFL). LoHa's (w1a·w1b) ⊙ (w2a·w2b) and
/// LoKr's w1 ⊗ w2 compute each row of ΔW from that row alone (`LoHa.Loaded`: w1a's and w2a's row;
/// `LoKr.Loaded`: w1's row i / w2Rows, w2's row i mod w2Rows, wherever the part boundaries fall), and
/// so does LyCORIS DoRA per output row (`WeightDecompose`: m of the row, the row's norm), so the inner
/// update applied to its own row numbers gives the part the bits the fused tensor's rows get.
/// Updates that need other rows (DoRA per input column, `needsAllRows`) are refused before this.
struct OutputRowSlice: LoadedUpdate {
    let inner: any LoadedUpdate
    /// The inner update's rows the base tensor holds, in the base tensor's row order.
    let rows: [Range<Int>]

    /// The base rows `[r0, r0 + count)` as runs of consecutive inner rows: (first row in the block,
    /// first inner row, count).
    private func runs(_ r0: Int, _ count: Int) -> [(at: Int, source: Int, count: Int)] {
        var out: [(at: Int, source: Int, count: Int)] = []
        var start = 0
        for range in rows {
            let lo = max(r0, start), hi = min(r0 + count, start + range.count)
            if lo < hi { out.append((lo - r0, range.lowerBound + lo - start, hi - lo)) }
            start += range.count
        }
        return out
    }

    /// Each run through the inner update on its own rows of `block` (a copy of them when the run is
    /// not the whole block).
    private func forEachRun<T>(_ r0: Int, _ count: Int, cols: Int, _ block: inout [T], _ apply: (Int, Int, inout [T]) -> Void) {
        for run in runs(r0, count) {
            if run.at == 0, run.count == count {
                apply(run.source, run.count, &block)
                continue
            }
            let span = (run.at * cols)..<((run.at + run.count) * cols)
            var part = Array(block[span])
            apply(run.source, run.count, &part)
            block.replaceSubrange(span, with: part)
        }
    }

    func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
        forEachRun(r0, count, cols: cols, &block) { source, n, b in inner.apply(toRows: source, count: n, cols: cols, block: &b, weight: weight) }
    }

    func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
        forEachRun(r0, count, cols: cols, &block) { source, n, b in inner.apply64(toRows: source, count: n, cols: cols, block: &b, weight: weight) }
    }
}
