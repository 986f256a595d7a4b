import SafeTensors

/// The fields of PEFT's `OFTConfig` that build OFT's rotations (PEFT 0.21.2 defaults).
public struct OFTSettings: Sendable, Equatable {
    /// `coft`: a block's generator Q with ‖Q‖_F > eps/√(stored blocks) is scaled onto that sphere.
    public var coft = false
    /// `eps`: COFT's radius before the 1/√blocks factor.
    public var eps = 6e-5
    /// `block_share`: one generator, stored (1, n), for every block of a module.
    public var blockShare = false
    /// `use_cayley_neumann`: R by the truncated Neumann series; false: the Cayley transform.
    public var cayleyNeumann = true
    /// `num_cayley_neumann_terms`.
    public var neumannTerms = 5

    public init() {}
}

/// OFT (PEFT `OFTConfig`, peft_type OFT): every row of W multiplied by a block-diagonal R over its
/// input columns. Linear: W' = W·Rᵀ (PEFT's merge `mm(R, Wᵀ)ᵀ`); Embedding: W' = W·R (`mm(W, R)`).
///
/// Tensors: `oft_R.weight` (Linear) or `oft_embedding_R.weight` (Embedding), (blocks, b(b−1)/2):
/// per block the strict upper triangle of a b×b matrix, row by row (`torch.triu_indices(b, b, 1)`),
/// and Q = U − Uᵀ. The block size b comes from that width and the weight's input columns must be a
/// whole number of blocks (PEFT's per-layer `r`/`oft_block_size` adjustment is in the shape).
/// `block_share`: one stored generator repeated over all in/b blocks. `module_dropout` only acts in
/// training. Convolutions (PEFT's Conv2d OFT) and `fan_in_fan_out` are refused.
///
/// R per block, as `OFTRotationModule.get_weight`: with `coft`, each generator outside the sphere
/// ‖Q‖_F ≤ ε' (ε' = fp32(eps)·(1/√blocks), blocks as stored) becomes ε'·(v/‖Q‖_F), each element
/// rounded twice as PEFT does (‖Q‖_F itself is computed in fp64 and rounded once). Then, with
/// `use_cayley_neumann` (the default) R = I + 2Q + 2Q² + … + 2Q^(n−2) + Q^(n−1) for n =
/// `num_cayley_neumann_terms` (n = 5: I + 2Q + 2Q² + 2Q³ + Q⁴), which is not orthogonal: each
/// power an fp32 product over the inner index in order, each addition rounded. The products follow
/// torch's CPU `bmm` as measured on torch 2.x: for b ≤ 8 its own loop, each product rounded before
/// it is added (bit for bit on the fixtures); for larger blocks BLAS, here one FMA per term (BLAS
/// kernels may order b = 9…11 otherwise: a last-bit difference in R, within the bound). Without it
/// R = (I − Q)(I + Q)⁻¹, solved in fp64 and rounded once (PEFT: LAPACK in fp32).
///
/// Rounding of the merge: each output an fp32 sum of b products with FMAs in order, rounded once
/// to the output dtype. Multiplicative: `--weight` is 1, or −1 to un-merge by each block's exact
/// inverse (PEFT's unmerge inverts R too; Rᵀ would be wrong, R not being orthogonal).
enum OFT: AdapterUpdateType {
    static let name = "OFT"
    static let linearRole = "oft_R.weight", embeddingRole = "oft_embedding_R.weight"
    static let roles: Set<String> = [linearRole, embeddingRole]
    static let refusedRoles: [String: String] = [:]

    /// b with b(b−1)/2 = n, nil when there is none with b ≥ 2.
    static func blockSize(forElements n: Int) -> Int? {
        guard n > 0 else { return nil }
        var b = 2
        while b * (b - 1) / 2 < n { b += 1 }
        return b * (b - 1) / 2 == n ? b : nil
    }

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        guard case let .peft(_, _, config) = origin else {
            throw LoRACoreError.invalidModule(module: module, detail: "OFT tensors outside a PEFT adapter")
        }
        guard tensors.count == 1, let t = tensors.values.first else {
            throw LoRACoreError.invalidModule(module: module, detail: "has both \(linearRole) and \(embeddingRole)")
        }
        guard TensorData.format(t.dtype) != nil, t.shape.count == 2, t.shape[0] > 0, blockSize(forElements: t.shape[1]) != nil else {
            throw LoRACoreError.invalidModule(
                module: module, detail: "tensor '\(t.name)' is \(t.dtype.rawValue) \(t.shape); OFT's generators are F32, F16 or BF16 (blocks, b(b−1)/2) with b ≥ 2")
        }
        let settings = config.oft
        let blocks = t.shape[0], b = blockSize(forElements: t.shape[1])!
        if settings.blockShare && blocks != 1 {
            throw LoRACoreError.invalidModule(module: module, detail: "adapter_config.json sets block_share but '\(t.name)' holds \(blocks) generators, not 1")
        }
        var update = ModuleUpdate(type: OFT.self, tensors: tensors.mapValues(\.name), parameterCount: t.elementCount ?? 0,
                                  isMultiplicative: true, scalesBias: false)
        update.rotatesInputs = true
        update.oft = settings
        return AdapterModule(updating: module, update: update, rank: blocks, alpha: 1, scale: 1, out: 0, in: settings.blockShare ? 0 : blocks * b)
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let u = module.update!, settings = u.oft!
        let (role, name) = u.tensors.first!
        let shape = checkpoint.info(name)!.shape
        let stored = shape[0], n = shape[1], b = blockSize(forElements: n)!
        guard module.inFeatures % b == 0 else {
            throw LoRACoreError.invalidModule(
                module: module.module, detail: "the weight's \(module.inFeatures) input columns are not a whole number of OFT blocks of \(b) ('\(name)')")
        }
        let values = try UpdateMath.floats(checkpoint, name, module: module.module)
        let generators = (0..<stored).map { Array(values[$0 * n..<($0 + 1) * n]) }
        let r32 = generators.map { rotation($0, b: b, blocks: stored, settings) }
        let r64 = generators.map { rotation64($0.map(Double.init), b: b, blocks: stored, settings) }
        return Loaded(r32: r32, r64: r64, inverse32: r32.map { UpdateMath.solve($0.map(Double.init), UpdateMath.identity(b), b: b) },
                      inverse64: r64.map { UpdateMath.solve($0, UpdateMath.identity(b), b: b) }, size: b, linear: role == linearRole)
    }

    /// Q = U − Uᵀ from the strict upper triangle `v` (row by row), b×b row-major.
    static func skew<T: BinaryFloatingPoint>(_ v: [T], b: Int) -> [T] {
        var q = [T](repeating: 0, count: b * b)
        var next = 0
        for i in 0..<b {
            for j in (i + 1)..<b {
                q[i * b + j] = v[next]
                q[j * b + i] = 0 - v[next]
                next += 1
            }
        }
        return q
    }

    /// One block's R in fp32, in PEFT's order (see the type's documentation).
    static func rotation(_ v: [Float], b: Int, blocks: Int, _ s: OFTSettings) -> [Float] {
        var v = v
        if s.coft {
            let radius = Float(s.eps) * (1 / Float(blocks).squareRoot())
            let norm = Float(v.reduce(0.0) { $0 + 2 * Double($1) * Double($1) }.squareRoot())
            if !(norm <= radius) { v = v.map { radius * ($0 / norm) } }
        }
        let q = skew(v, b: b)
        guard s.cayleyNeumann else { return cayley(skew(v.map(Double.init), b: b), b: b).map { Float($0) } }
        var r = [Float](repeating: 0, count: b * b)
        for i in 0..<b { r[i * b + i] = 1 }
        func add(_ p: [Float], _ k: Float) { for i in r.indices { r[i] += k * p[i] } }
        if s.neumannTerms > 1 { add(q, 2) }
        if s.neumannTerms > 2 {
            var p = torchProduct(q, q, b: b)
            add(p, 2)
            for _ in 3..<max(3, s.neumannTerms - 1) {
                p = torchProduct(p, q, b: b)
                add(p, 2)
            }
            add(torchProduct(p, q, b: b), 1)
        }
        return r
    }

    /// b×b · b×b in fp32 as torch's CPU `bmm` rounds it (see the type's documentation).
    static func torchProduct(_ x: [Float], _ y: [Float], b: Int) -> [Float] {
        guard b <= 8 else { return UpdateMath.product(x, y, rows: b, inner: b, cols: b) }
        var out = [Float](repeating: 0, count: b * b)
        for i in 0..<b {
            for j in 0..<b {
                var acc: Float = 0
                for k in 0..<b { acc += x[i * b + k] * y[k * b + j] }
                out[i * b + j] = acc
            }
        }
        return out
    }

    /// The same R in fp64, written from the definitions (the probe check of verify).
    static func rotation64(_ v: [Double], b: Int, blocks: Int, _ s: OFTSettings) -> [Double] {
        var v = v
        if s.coft {
            let radius = s.eps / Double(blocks).squareRoot()
            let norm = (2 * v.map { $0 * $0 }.reduce(0, +)).squareRoot()
            if norm > radius { v = v.map { $0 * radius / norm } }
        }
        let q = skew(v, b: b)
        guard s.cayleyNeumann else { return cayley(q, b: b) }
        // Σ cₖ Qᵏ with c₀ = 1, c₁ … c_{n−2} = 2, c_{n−1} = 1 (n = 1: I).
        var r = [Double](repeating: 0, count: b * b), power = [Double](repeating: 0, count: b * b)
        for i in 0..<b { power[i * b + i] = 1 }
        for k in 0..<s.neumannTerms {
            let c: Double = k == 0 || k == s.neumannTerms - 1 ? 1 : 2
            for i in r.indices { r[i] += c * power[i] }
            power = UpdateMath.product(power, q, rows: b, inner: b, cols: b)
        }
        return r
    }

    /// (I − Q)(I + Q)⁻¹ = (I + Q)⁻¹(I − Q) (they commute), solved in fp64 (`UpdateMath.solve`);
    /// I + Q is invertible for every skew-symmetric Q.
    static func cayley(_ q: [Double], b: Int) -> [Double] {
        var a = [Double](repeating: 0, count: b * b), x = [Double](repeating: 0, count: b * b)
        for i in 0..<b {
            for j in 0..<b {
                let e: Double = i == j ? 1 : 0
                a[i * b + j] = e + q[i * b + j]
                x[i * b + j] = e - q[i * b + j]
            }
        }
        return UpdateMath.solve(a, x, b: b)!
    }

    /// Each block's R (b×b row-major) in both precisions; one R for all blocks with block_share.
    /// Un-merge (weight −1) applies each block's exact inverse instead: of the fp32 R the merge
    /// applied, in fp64 and rounded once (fp32 path); of the fp64 R (fp64 path). Not Rᵀ: the
    /// Neumann series' R is not orthogonal.
    struct Loaded: LoadedUpdate {
        let r32: [[Float]], r64: [[Double]]
        /// R⁻¹ per block, nil for a singular block (the merge plan refuses to un-merge it).
        let inverse32: [[Double]?], inverse64: [[Double]?]
        let size: Int
        /// Linear: out[c] = Σₖ R[c][k]·w[k]; Embedding: out[c] = Σₖ w[k]·R[k][c].
        let linear: Bool

        var inverseProblem: String? {
            inverse32.firstIndex { $0 == nil }.map { "block \($0) of R is singular (R = I + 2Q + … has eigenvalue 0 where Q has ±i)" }
        }

        /// `weight` is 1 or −1 (the merge plan refuses others for `rotatesInputs`).
        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            let b = size
            var x = [Float](repeating: 0, count: b)
            for row in 0..<count {
                for j in 0..<(cols / b) {
                    let start = row * cols + j * b
                    for k in 0..<b { x[k] = block[start + k] }
                    if weight < 0 {
                        let r = inverse32[j % inverse32.count]!
                        for c in 0..<b {
                            var acc = 0.0
                            for k in 0..<b { acc += (linear ? r[c * b + k] : r[k * b + c]) * Double(x[k]) }
                            block[start + c] = Float(acc)
                        }
                        continue
                    }
                    let r = r32[j % r32.count]
                    for c in 0..<b {
                        var acc: Float = 0
                        for k in 0..<b { acc = acc.addingProduct(linear ? r[c * b + k] : r[k * b + c], x[k]) }
                        block[start + c] = acc
                    }
                }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            let b = size
            for row in 0..<count {
                for j in 0..<(cols / b) {
                    let start = row * cols + j * b, r = weight < 0 ? inverse64[j % inverse64.count]! : r64[j % r64.count]
                    let x = Array(block[start..<start + b])
                    for c in 0..<b {
                        var acc = 0.0
                        for k in 0..<b { acc += (linear ? r[c * b + k] : r[k * b + c]) * x[k] }
                        block[start + c] = acc
                    }
                }
            }
        }
    }
}
