/// A LoRA initialisation that moved part of the base weight into the factors (`init_lora_weights`):
/// PEFT trains on the residual model W_res = W − s·B₀A₀, so the saved factors (A, B) add to W_res,
/// not to W.
///
/// - PiSSA (`pissa`, `pissa_niter_N`), OLoRA, CorDA and LoRA-GA: W_res = W − s·B₀A₀ exactly as PEFT
///   computes it, so the adapter converts to a plain LoRA of the original W from its factors at
///   initialisation, ΔW = s·(BA − B₀A₀) = s·[B, −B₀]·[A; A₀] (`Convert`, PEFT's
///   `path_initial_model_for_weight_conversion`).
/// - LoftQ: W_res is a quantized W − s·B₀A₀, so the difference is not a LoRA of W; it merges only
///   into its LoftQ base.
///
/// Either merges into the residual model it was trained on (`--residual-base`).
public enum ResidualInitialisation: String, Sendable {
    case pissa, olora, corda
    case loraGA = "lora_ga"
    case loftq

    /// PEFT 0.21.2's reading of `init_lora_weights` (`lora/layer.py` `update_layer`): nil for the
    /// initialisations that leave the base as it is.
    /// - Throws: `Unknown` for a string PEFT does not define, which lora-tool will not guess at.
    init?(configValue s: String) throws {
        switch s {
        case _ where s.hasPrefix("pissa"): self = .pissa
        case _ where s.hasPrefix("corda"): self = .corda
        case _ where s.lowercased() == "olora": self = .olora
        case "lora_ga": self = .loraGA
        case "loftq": self = .loftq
        case _ where ["gaussian", "mica"].contains(s.lowercased()), "eva", "orthogonal": return nil
        default: throw Unknown(value: s)
        }
    }

    struct Unknown: Error { let value: String }

    /// The method as users name it.
    public var name: String {
        switch self {
        case .pissa: "PiSSA"
        case .olora: "OLoRA"
        case .corda: "CorDA"
        case .loraGA: "LoRA-GA"
        case .loftq: "LoftQ"
        }
    }

    /// Whether the factors at initialisation turn the adapter into a LoRA of the original weights.
    public var convertsToLoRA: Bool { self != .loftq }

    /// The other way, for errors that refuse such an adapter.
    var conversion: String {
        convertsToLoRA
            ? "or make it a LoRA of the original model with `lora-tool convert ADAPTER --to peft --initial INITIAL_ADAPTER` (the adapter PEFT saved at initialisation)"
            : "LoftQ's residual is quantized, so no LoRA of the original model reproduces it"
    }

    /// "init_lora_weights 'pissa': this PiSSA adapter is relative to the residual model PEFT trained it on".
    private static func relative(_ adapter: Adapter) -> String {
        let r = adapter.config.residualInitialisation!
        return "init_lora_weights '\(adapter.config.initLoraWeights ?? r.rawValue)': this \(r.name) adapter is relative to the residual model PEFT trained it on"
    }

    /// Refuses `command` for an adapter trained on a residual model.
    /// - Throws: `LoRACoreError.unsupportedAdapter` naming the method and what to do instead.
    static func refuse(_ adapter: Adapter, _ command: String) throws {
        guard let r = adapter.config.residualInitialisation else { return }
        throw LoRACoreError.unsupportedAdapter(
            path: adapter.path,
            detail: "\(relative(adapter)), so \(command) cannot use it as it is: merge it into that model with --residual-base\(r.convertsToLoRA ? ", " : " (")\(r.conversion)\(r.convertsToLoRA ? "" : ")")")
    }

    /// The adapters of a merge or verify against `--base`: an adapter trained on a residual model
    /// only with `residualBase` (the user says the base is that model), alone and at weight 1
    /// (the residual model plus a share of the factors is neither model); `residualBase` only with one.
    /// - Throws: `LoRACoreError.unsupportedAdapter` or `.invalidRequest` saying which.
    static func check(_ adapters: [Adapter], weights: [Double], residualBase: Bool) throws {
        let residual = adapters.indices.filter { adapters[$0].config.residualInitialisation != nil }
        guard residualBase else {
            if let i = residual.first {
                let r = adapters[i].config.residualInitialisation!
                throw LoRACoreError.unsupportedAdapter(
                    path: adapters[i].path,
                    detail: "\(relative(adapters[i])), not to the original model: if --base is that residual model, add --residual-base\(r.convertsToLoRA ? "; " : " (")\(r.conversion)\(r.convertsToLoRA ? "" : ")")")
            }
            return
        }
        guard residual.count == 1, adapters.count == 1 else {
            throw LoRACoreError.invalidRequest(
                residual.isEmpty
                    ? "--residual-base applies to an adapter initialised by PiSSA, OLoRA, CorDA, LoRA-GA or LoftQ (init_lora_weights); \(adapters.map(\.path).joined(separator: ", ")) \(adapters.count == 1 ? "is" : "are") not"
                    : "--residual-base takes one adapter: the residual model belongs to it alone")
        }
        guard weights.first == 1 else {
            throw LoRACoreError.invalidRequest(
                "--residual-base merges the adapter at weight 1: the residual model plus a share of its factors is neither model (convert it with --initial to weight it)")
        }
    }
}
