import SafeTensors

/// BOFT (PEFT `BOFTConfig`, peft_type BOFT): W' = (B·Wᵀ)ᵀ ⊙ s, every row of W multiplied by the
/// butterfly matrix B over its input columns, then by its own scale.
///
/// Tensors: `boft_R` (m, D, H, H), m butterfly factors of D blocks of H×H (in = D·H), and `boft_s`
/// (out, 1). Block d of factor i is the Cayley transform (I − S)(I + S)⁻¹ of S = 0.5·(A − Aᵀ) (fp32,
/// as PEFT), solved in fp64 and rounded once (PEFT: LAPACK in fp32). Factor i is Pᵢ·diag(blocks)·Pᵢᵀ
/// with PEFT's `block_butterfly_perm(in, D/2ⁱ, H/2, m − 1)` (Pᵢ[j, perm[j]] = 1; P₀ = I), the block
/// diagonal per factor being what `fbd_cuda_kernel.cu` builds, and B = F_{m−1}·…·F₁·F₀.
///
/// The factor count is m = boft_R's first dimension, never the config's `boft_n_butterfly_factor`:
/// without its CUDA extension PEFT trains with one factor and saves the config's number anyway (and
/// cannot itself merge an adapter trained with more on such a machine; lora-tool can). m > 1 needs an
/// even H and D a multiple of 2^(m−1), as PEFT's `update_layer` checks. `boft_dropout` acts in
/// training only; the bias is not changed; convolutions (PEFT's Conv2d BOFT) and `fan_in_fan_out`
/// are refused.
///
/// Rounding, as PEFT's `merge` in fp32: the permutations are exact; each product Fᵢ·(…) an fp32
/// sum over the inner index in order with one FMA per term (zeros skipped: exact); each merged
/// element Σₖ B[c][k]·w[k] the same way, × s rounded, then once to the output dtype. Multiplicative:
/// `--weight` is 1, or −1 to un-merge by the exact inverse (a zero scale or singular block refused).
enum BOFT: AdapterUpdateType {
    static let name = "BOFT"
    static let roles: Set<String> = ["boft_R", "boft_s"]
    static let refusedRoles: [String: String] = [:]

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        guard case .peft = origin else {
            throw LoRACoreError.invalidModule(module: module, detail: "BOFT tensors outside a PEFT adapter")
        }
        guard let r = tensors["boft_R"], let s = tensors["boft_s"] else {
            throw LoRACoreError.invalidModule(module: module, detail: "BOFT module needs boft_R and boft_s (has \(tensors.keys.sorted().joined(separator: ", ")))")
        }
        guard TensorData.format(r.dtype) != nil, r.shape.count == 4, r.shape[0] > 0, r.shape[1] > 0, r.shape[2] > 0, r.shape[2] == r.shape[3] else {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(r.name)' is \(r.dtype.rawValue) \(r.shape); boft_R is F32, F16 or BF16 (factors, blocks, b, b)")
        }
        guard TensorData.format(s.dtype) != nil, s.shape.count == 2, s.shape[0] > 0, s.shape[1] == 1 else {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(s.name)' is \(s.dtype.rawValue) \(s.shape); boft_s is F32, F16 or BF16 (out, 1)")
        }
        let factors = r.shape[0], blocks = r.shape[1], b = r.shape[2]
        if factors > 1 && (b % 2 != 0 || factors > 32 || blocks % (1 << (factors - 1)) != 0) {
            throw LoRACoreError.invalidModule(
                module: module, detail: "boft_R \(r.shape): \(factors) butterfly factors need an even block size and a block count divisible by 2^\(factors - 1)")
        }
        var update = ModuleUpdate(type: BOFT.self, tensors: tensors.mapValues(\.name), parameterCount: (r.elementCount ?? 0) + (s.elementCount ?? 0),
                                  isMultiplicative: true, scalesBias: false)
        update.rotatesInputs = true
        return AdapterModule(updating: module, update: update, rank: blocks, alpha: 1, scale: 1, out: s.shape[0], in: blocks * b)
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let t = module.update!.tensors
        let shape = checkpoint.info(t["boft_R"]!)!.shape
        let (factors, blocks, b) = (shape[0], shape[1], shape[2])
        let values = try UpdateMath.floats(checkpoint, t["boft_R"]!, module: module.module)
        let scales = try UpdateMath.floats(checkpoint, t["boft_s"]!, module: module.module)
        // Each block's S = 0.5·(A − Aᵀ), the difference rounded in fp32 as PEFT's cayley_batch.
        let cayleys: [[Double]] = (0..<factors * blocks).map { k in
            let a = Array(values[k * b * b..<(k + 1) * b * b])
            var skew = [Double](repeating: 0, count: b * b)
            for i in 0..<b { for j in 0..<b { skew[i * b + j] = Double(0.5 * (a[i * b + j] - a[j * b + i])) } }
            return OFT.cayley(skew, b: b)
        }
        let n = blocks * b
        let perms = (0..<factors).map { permutation(n: n, blocks: blocks >> $0, half: b / 2, factors: factors) }
        let rounded = cayleys.map { $0.map { Float($0) } }
        return Loaded(blocks: cayleys, perms: perms, size: b, blockCount: blocks, scales: scales,
                      butterfly: butterfly(rounded, perms: perms, size: b, blockCount: blocks),
                      roundedInverses: rounded.map { UpdateMath.solve($0.map(Double.init), UpdateMath.identity(b), b: b) })
    }

    /// PEFT's `block_butterfly_perm(n, blocks, half, factors − 1)`: identity for one factor; else
    /// within each run of n/blocks indices, chunks of `half` reordered evens first, then odds.
    static func permutation(n: Int, blocks: Int, half: Int, factors: Int) -> [Int] {
        guard factors > 1 else { return Array(0..<n) }
        let size = n / blocks, step = size / half
        let sequence = Array(stride(from: 0, to: step, by: 2)) + Array(stride(from: 1, to: step, by: 2))
        let order = sequence.flatMap { pos in (pos * half)..<(pos * half + half) }
        return (0..<n).map { j in j - j % size + order[j % size] }
    }

    /// A sparse row: (column, value) by ascending column.
    typealias Row = [(column: Int, value: Float)]

    /// B = F_{m−1}·…·F₀ in fp32 as sparse rows, Fᵢ[j][l] = block(perm[j])[perm[j] % H][perm[l] % H]
    /// when perm[j] and perm[l] are in one block, each product summed over the inner index in order.
    static func butterfly(_ rs: [[Float]], perms: [[Int]], size b: Int, blockCount: Int) -> [Row] {
        let n = blockCount * b
        func factor(_ i: Int) -> [Row] {
            let perm = perms[i]
            var inverse = [Int](repeating: 0, count: n)
            for (j, p) in perm.enumerated() { inverse[p] = j }
            return (0..<n).map { j in
                let a = perm[j], d = a / b, r = rs[i * blockCount + d]
                return (0..<b).map { t in (inverse[d * b + t], r[(a % b) * b + t]) }.sorted { $0.column < $1.column }
            }
        }
        var product = factor(0)
        for i in 1..<max(1, perms.count) {
            let f = factor(i)
            var acc = [Float](repeating: 0, count: n), touched = [Bool](repeating: false, count: n)
            product = f.map { row in
                for (a, m) in row {
                    for (j, v) in product[a] {
                        acc[j] = acc[j].addingProduct(m, v)
                        touched[j] = true
                    }
                }
                var out: Row = []
                for j in 0..<n where touched[j] {
                    out.append((j, acc[j]))
                    acc[j] = 0
                    touched[j] = false
                }
                return out
            }
        }
        return product
    }

    struct Loaded: LoadedUpdate {
        /// Each factor's blocks' R in fp64 (factor-major), for the fp64 path.
        let blocks: [[Double]]
        let perms: [[Int]]
        let size: Int, blockCount: Int
        let scales: [Float]
        /// B in fp32 (sparse rows), for the fp32 path.
        let butterfly: [Row]
        /// The inverse of each fp32 block B is built from (factor-major), for un-merge; nil when singular.
        let roundedInverses: [[Double]?]

        var inverseProblem: String? {
            if let row = scales.firstIndex(of: 0) { return "boft_s[\(row)] is 0: that row was erased" }
            return roundedInverses.firstIndex { $0 == nil }.map { "butterfly block \($0 % blockCount) of factor \($0 / blockCount) is singular" }
        }

        /// `weight` is 1, or −1: un-merge, W = (W' ⊘ s)·B⁻ᵀ (`unmerge`).
        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            if weight < 0 { return unmerge(toRows: r0, count: count, cols: cols, block: &block) }
            var x = [Float](repeating: 0, count: cols)
            for row in 0..<count {
                let start = row * cols
                for k in 0..<cols { x[k] = block[start + k] }
                for c in 0..<cols {
                    var acc: Float = 0
                    for (k, v) in butterfly[c] { acc = acc.addingProduct(v, x[k]) }
                    block[start + c] = acc * scales[r0 + row]
                }
            }
        }

        /// Un-merge in fp64, rounded once: each row divided by its scale, then the factors' inverses
        /// F₀⁻¹·…·F_{m−1}⁻¹ (each Pᵢ·diag(blocks⁻¹)·Pᵢᵀ) applied last factor first, with the exact
        /// inverses of the fp32 blocks the merge built B from (not the transposes: rounded, they
        /// are not orthogonal).
        private func unmerge(toRows r0: Int, count: Int, cols: Int, block: inout [Float]) {
            for row in 0..<count {
                let s = Double(scales[r0 + row])
                var x = (0..<cols).map { Double(block[row * cols + $0]) / s }
                for i in perms.indices.reversed() { x = applyFactor(i, blocks: roundedInverses.map { $0! }, to: x) }
                for c in 0..<cols { block[row * cols + c] = Float(x[c]) }
            }
        }

        /// Fᵢ·x for factor i built from `blocks` (factor-major b×b), in fp64.
        private func applyFactor(_ i: Int, blocks: [[Double]], to x: [Double]) -> [Double] {
            let b = size, perm = perms[i], n = x.count
            var inverse = [Int](repeating: 0, count: n)
            for (j, p) in perm.enumerated() { inverse[p] = j }
            return (0..<n).map { j in
                let a = perm[j], d = a / b, r = blocks[i * blockCount + d]
                return (0..<b).reduce(0.0) { $0 + r[(a % b) * b + $1] * x[inverse[d * b + $1]] }
            }
        }

        /// The factors applied to each row in turn (x ← Fᵢ·x), in fp64: B is never formed. Un-merge
        /// applies the transposed blocks in reverse order after dividing by the scale: the exact
        /// Cayley blocks are orthogonal.
        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            let transposed = weight < 0 ? blocks.map { UpdateMath.transpose($0, b: size) } : []
            for row in 0..<count {
                let s = Double(scales[r0 + row])
                var x = Array(block[row * cols..<(row + 1) * cols])
                if weight < 0 {
                    x = x.map { $0 / s }
                    for i in perms.indices.reversed() { x = applyFactor(i, blocks: transposed, to: x) }
                } else {
                    for i in perms.indices { x = applyFactor(i, blocks: blocks, to: x) }
                    x = x.map { $0 * s }
                }
                for c in 0..<cols { block[row * cols + c] = x[c] }
            }
        }
    }
}
