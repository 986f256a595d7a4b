import SafeTensors

/// Trainable tokens (PEFT `trainable_token_indices`, beside LoRA): the embedding rows of chosen
/// tokens trained as new values, stored as `<embedding>.token_adapter.trainable_tokens_delta`
/// [k, hidden] with the indices in adapter_config.json.
///
/// Despite its name the tensor holds the rows' new values, not a difference: PEFT's merge writes
/// them with `index_copy` (`trainable_tokens/layer.py`), W[indices[i]] = delta[i], rounded once to
/// the weight's dtype. A replacement, so `--weight` must be 1 (there is no half of one, and the
/// original rows are not stored, so it cannot be un-merged). Indices must be distinct (PEFT's
/// `index_copy` leaves repeated ones undefined) and inside the embedding.
enum TrainableTokens: AdapterUpdateType {
    static let name = "trainable tokens"
    /// Not found by the update types' pairing: the PEFT dialect reads these beside LoRA factors.
    static let roles: Set<String> = []
    static let refusedRoles: [String: String] = [:]
    /// The suffix of the stored rows after the embedding module's name.
    static let suffix = ".token_adapter.trainable_tokens_delta"

    static func module(_ module: String, tensors: [String: TensorInfo], origin: UpdateOrigin) throws -> AdapterModule {
        throw LoRACoreError.invalidModule(module: module, detail: "trainable tokens come with LoRA adapters (trainable_token_indices), not as a type of their own")
    }

    /// The module of embedding `module` whose rows `indices` become `delta`'s rows.
    static func module(_ module: String, delta: TensorInfo, indices: [Int]) throws -> AdapterModule {
        guard delta.shape.count == 2, delta.shape[0] == indices.count, delta.shape[1] > 0, TensorData.format(delta.dtype) != nil else {
            throw LoRACoreError.invalidModule(
                module: module,
                detail: "tensor '\(delta.name)' is \(delta.dtype.rawValue) \(delta.shape); trainable_token_indices gives \(indices.count) tokens, so [\(indices.count), hidden] F32/F16/BF16 rows")
        }
        if let bad = indices.first(where: { $0 < 0 }) {
            throw LoRACoreError.invalidModule(module: module, detail: "token index \(bad) is negative")
        }
        guard Set(indices).count == indices.count else {
            throw LoRACoreError.invalidModule(module: module, detail: "trainable_token_indices repeats a token (PEFT's index_copy leaves the result undefined)")
        }
        var update = ModuleUpdate(type: TrainableTokens.self, tensors: ["trainable_tokens_delta": delta.name], parameterCount: delta.elementCount ?? 0,
                                  isMultiplicative: false, scalesBias: false)
        update.tokenIndices = indices
        return AdapterModule(updating: module, update: update, rank: indices.count, alpha: 1, scale: 1, out: 0, in: delta.shape[1])
    }

    static func load(_ module: AdapterModule, from checkpoint: Checkpoint) throws -> any LoadedUpdate {
        let indices = module.update!.tokenIndices!
        if let outside = indices.first(where: { $0 >= module.outFeatures }) {
            throw LoRACoreError.baseMismatch(module: module.module, detail: "token index \(outside) is outside the embedding's \(module.outFeatures) rows")
        }
        let rows = try UpdateMath.floats(checkpoint, module.update!.tensors["trainable_tokens_delta"]!, module: module.module)
        return Loaded(rows: rows, position: Dictionary(uniqueKeysWithValues: indices.enumerated().map { ($1, $0) }))
    }

    /// The new rows in fp32, by token.
    struct Loaded: LoadedUpdate {
        let rows: [Float]
        /// Token → its row in `rows`.
        let position: [Int: Int]

        func apply(toRows r0: Int, count: Int, cols: Int, block: inout [Float], weight: Float) {
            for r in 0..<count {
                guard let k = position[r0 + r] else { continue }
                for j in 0..<cols { block[r * cols + j] = rows[k * cols + j] }
            }
        }

        func apply64(toRows r0: Int, count: Int, cols: Int, block: inout [Double], weight: Double) {
            for r in 0..<count {
                guard let k = position[r0 + r] else { continue }
                for j in 0..<cols { block[r * cols + j] = Double(rows[k * cols + j]) }
            }
        }
    }
}
