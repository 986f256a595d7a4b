import SafeTensors

/// What makes an update out of a module's tensors: every module update (`ModuleUpdate.type`) has
/// one. `ExpertLoRA`, resolved against the base rather than paired by tensor suffix, is only this.
protocol UpdateLoader: Sendable {
    /// The word `inspect` prints: `LoHa`, `LoKr`, `IA3`.
    static var name: String { get }
    /// Loads a module (read by its dialect or resolver), its geometry fitted to the base weight.
    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate
}

/// An adapter type other than LoRA (LoHa, LoKr, IA³, VeRA, OFT, BOFT, FourierFT): it recognises its
/// tensors, reads one module's tensors into the canonical `AdapterModule` (with a `ModuleUpdate`),
/// and loads them into a `LoadedUpdate` that changes any block of rows of the target weight.
///
/// Merge, verify and inspect only see those three things, so adding a type is one file with a type
/// conforming to this protocol plus its line in `AdapterUpdateTypes.registered`.
///
/// Every type reads the flat view of the target weight: (rows, cols) = (shape[0], product of the
/// rest), row-major, as PEFT's and LyCORIS' `weight.reshape(base.weight.shape)` lays it out.
protocol AdapterUpdateType: UpdateLoader {
    /// The tensor suffixes (PEFT and LyCORIS spell them alike) that make up one module; a suffix may
    /// span two name components (OFT's `oft_R.weight`).
    static var roles: Set<String> { get }
    /// Suffixes of this type that lora-tool does not merge, with the reason (named in the refusal).
    static var refusedRoles: [String: String] { get }
    /// Tensors stored once for every module (VeRA's projections), given to each module's update
    /// under these roles by the dialect.
    static var sharedRoles: Set<String> { get }
    /// Reads one module: checks the tensors' shapes against each other and resolves the scale by the
    /// rule of the package that wrote the file (`origin`).
    /// - Parameter tensors: role → the tensor's header entry.
    /// - Throws: `LoRACoreError.invalidModule` naming the module and the tensors at fault.
    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule
}

extension AdapterUpdateType {
    static var sharedRoles: Set<String> { [] }
}

/// Which package's rules a module's scale follows.
enum UpdateOrigin: Sendable {
    /// PEFT: r and α from adapter_config.json (`rank_pattern`/`alpha_pattern` resolved), and the
    /// config itself for the type's own fields (OFT's `coft`, `block_share`, …).
    case peft(rank: Int, alpha: Double, config: AdapterConfig)
    /// LyCORIS: the module's `alpha` tensor (nil when absent), the rank from the tensors.
    case lycoris(alpha: Double?)
}

/// A module's update as read from its files, before loading: its type and its tensors.
public struct ModuleUpdate: Sendable, Equatable {
    public static func == (l: ModuleUpdate, r: ModuleUpdate) -> Bool {
        l.typeName == r.typeName && l.tensors == r.tensors && l.parameterCount == r.parameterCount && l.experts == r.experts
            && l.fourierSeed == r.fourierSeed && l.kernel == r.kernel && l.lycorisDoRA == r.lycorisDoRA && l.peftConv1dKron == r.peftConv1dKron
            && l.rows == r.rows && l.outputRows == r.outputRows
    }

    let type: any UpdateLoader.Type
    /// `LoHa`, `LoKr`, `IA3`.
    public var typeName: String { type.name }
    /// Role (`hada_w1_a`, `lokr_w1`, `ia3_l`, …) → tensor name in the adapter file.
    public let tensors: [String: String]
    /// Trained values stored for the module (for the parameter share `inspect` reports).
    public let parameterCount: Int
    /// Whether the update multiplies the weight (IA³) rather than adding a delta: such updates
    /// cannot take a `--weight` other than 1.
    public let isMultiplicative: Bool
    /// Whether the update also changes the module's bias (IA³ on output rows, as PEFT merges it).
    public let scalesBias: Bool
    /// IA³ on input columns: the number of input channels (the base weight's shape[1]).
    public var inputChannels: Int? = nil
    /// Trainable tokens: the rows the update replaces (so `--weight` must be 1).
    public var tokenIndices: [Int]? = nil
    /// OFT, BOFT: the update multiplies each weight row by a matrix R over its input columns, so
    /// `--weight` must be 1 and the base a matrix (Linear, Embedding), not a convolution.
    public var rotatesInputs = false
    /// OFT: the settings that build each block's R.
    public var oft: OFTSettings? = nil
    /// ExpertLoRA: which rows of the experts' ΔW the base tensor holds.
    public var experts: ExpertSlice? = nil
    /// FourierFT: `random_loc_seed`, the seed of the spectrum's positions.
    public var fourierSeed: UInt64? = nil
    /// The convolution kernel the factors are for (a Tucker core's (r, r, kh, kw) → [kh, kw]; a LoKr's
    /// full w2, a LoCon's lora_down): the base must be a convolution with it (PEFT stores a Conv1d's
    /// core as [k, 1]).
    public var kernel: [Int]? = nil
    /// LyCORIS DoRA (`dora_scale`, `WeightDecompose`): each output row or input column of W + ΔW
    /// is rescaled, so `--weight` must be 1.
    public var lycorisDoRA: LycorisDoRANorms? = nil
    /// PEFT's LoKr on a Conv1d with a full 3-D `lokr_w2`: ΔW is PEFT's misaligned kron (see `LoKr`).
    public var peftConv1dKron = false
    /// `RowRangeLoRA`: the rows of the base tensor the LoRA's weight is (a fused q/k/v's third).
    public var rows: Range<Int>? = nil
    /// The rows of the update's own ΔW the base tensor holds, in its row order (`OutputRowSlice`: a
    /// diffusers part of a LoHa or LoKr on a fused BFL module); nil: all of them.
    public var outputRows: [Range<Int>]? = nil
    /// Whether the base must be a matrix: OFT and BOFT rotate input columns, and PEFT's FourierFT
    /// wraps Linear layers only (its 2-D spectrum is the weight's shape).
    var needsMatrix: Bool { rotatesInputs || fourierSeed != nil }

    /// The same update with `shared` (role → tensor name) added to its tensors.
    func adding(shared: [String: String]) -> ModuleUpdate {
        ModuleUpdate(type: type, tensors: tensors.merging(shared) { own, _ in own }, parameterCount: parameterCount,
                     isMultiplicative: isMultiplicative, scalesBias: scalesBias, inputChannels: inputChannels, tokenIndices: tokenIndices,
                     rotatesInputs: rotatesInputs, oft: oft, experts: experts, fourierSeed: fourierSeed, kernel: kernel, lycorisDoRA: lycorisDoRA, peftConv1dKron: peftConv1dKron,
                     rows: rows, outputRows: outputRows)
    }

    /// The update of `module` loaded by its type, on `outputRows` of its ΔW when set (`OutputRowSlice`).
    func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let loaded = try type.load(module, from: checkpoint)
        return outputRows.map { OutputRowSlice(inner: loaded, rows: $0) } ?? loaded
    }
}

/// A module's update loaded in fp32, applied to blocks of rows of the target weight's flat view.
protocol LoadedUpdate: Sendable {
    /// Rows `[r0, r0 + count)` of the weight (fp32, row-major, `cols` wide) in `block` ← the
    /// updated rows, in the reference package's rounding order, the delta multiplied by `weight`
    /// (rounded once, after the reference's own steps) before it is added.
    func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float)
    /// The same update in fp64, written independently of `apply` (the probe check of verify).
    func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double)
    /// The factors the bias is multiplied by (IA³ on output rows), nil when the bias is unchanged.
    var biasFactors: [Float]? { get }
    /// For a multiplicative update: why weight −1 cannot undo it (a zero factor, a singular
    /// block), nil when it can.
    var inverseProblem: String? { get }
    /// Whether a row of the update depends on every row of its input (LyCORIS DoRA with norms per
    /// input column): it then applies to a block of rows only once `resolvingColumns` saw them all,
    /// and otherwise only to the whole weight at once.
    var needsAllRows: Bool { get }
    /// This update resolved from all `rows` of its input (`cols` wide), which `input` (fp32, for
    /// `apply`) and `input64` (fp64, for `apply64`) fill a block of rows at a time in order; either
    /// may be nil when not needed.
    func resolvingColumns(rows: Int, cols: Int, weight: Float, input: ((_ r0: Int, _ count: Int, _ block: inout [Float]) throws -> Void)?,
                          input64: ((_ r0: Int, _ count: Int, _ block: inout [Double]) throws -> Void)?) throws -> any LoadedUpdate
}

extension LoadedUpdate {
    var biasFactors: [Float]? { nil }
    var inverseProblem: String? { nil }
    var needsAllRows: Bool { false }
    func resolvingColumns(rows: Int, cols: Int, weight: Float, input: ((_ r0: Int, _ count: Int, _ block: inout [Float]) throws -> Void)?,
                          input64: ((_ r0: Int, _ count: Int, _ block: inout [Double]) throws -> Void)?) throws -> any LoadedUpdate { self }
}

/// The adapter types besides LoRA that lora-tool merges.
enum AdapterUpdateTypes {
    static let registered: [any AdapterUpdateType.Type] = [LoHa.self, LoKr.self, IA3.self, VeRA.self, OFT.self, BOFT.self, FourierFT.self]

    /// The type a module's tensor suffixes belong to.
    /// - Throws: `LoRACoreError.invalidModule` for a suffix refused by its type (with the reason), or
    ///   for suffixes of two types in one module.
    static func owner(of module: String, roles: [String: String]) throws -> (any AdapterUpdateType.Type)? {
        // Plain values first: throwing from a loop over the existential metatypes crashes swift 6.3.1's SILGen.
        let refusals: [String: String] = registered.reduce(into: [:]) { all, t in
            for (role, why) in t.refusedRoles { all[role] = "\(t.name) \(role) \(why)" }
        }
        if let (role, why) = roles.keys.sorted().compactMap({ r in refusals[r].map { (r, $0) } }).first {
            throw LoRACoreError.invalidModule(module: module, detail: "tensor '\(roles[role]!)': \(why)")
        }
        // Roles several types carry (LyCORIS' dora_scale) say nothing about the owner.
        let specific = roles.keys.filter { !modifierRoles.contains($0) }
        if specific.isEmpty, let role = roles.keys.sorted().first {
            throw LoRACoreError.invalidModule(
                module: module, detail: "tensor '\(roles[role]!)': LyCORIS DoRA (\(role)) without LoHa, LoKr or LoCon factors")
        }
        let owners = registered.filter { t in specific.contains { t.roles.contains($0) } }
        let names = owners.map { $0.name }
        guard names.count <= 1 else {
            throw LoRACoreError.invalidModule(module: module, detail: "mixes \(names.joined(separator: " and ")) tensors")
        }
        return owners.first
    }

    /// Roles that modify another type's update rather than name a type (LyCORIS DoRA's `dora_scale`,
    /// a role of LoHa and LoKr).
    static let modifierRoles: Set<String> = ["dora_scale"]

    /// Whether a tensor suffix belongs to a registered type (refused ones included).
    static func isRole(_ role: String) -> Bool {
        registered.contains { $0.roles.contains(role) || $0.refusedRoles[role] != nil }
    }
}
