/// The side files that travel with a stream's tensors: the model directory they come from and the
/// edits config.json needs to describe the tensors the stream now holds. Passes edit it (a cast sets
/// the dtype, dequantizing drops `quantization_config`, keeping merged weights dense lists them);
/// the model-directory sink applies it (`SideFiles.copy`).
public struct SideFilePlan: Sendable, Equatable {
    /// The directory whose config.json, tokenizer and other side files are copied.
    public var directory: String
    /// `torch_dtype`/`dtype` written into config.json (`.keep`: unchanged).
    public var dtype: OutputDType = .keep
    /// The tensors are dense: `quantization_config` is dropped.
    public var dropQuantization = false
    /// Modules written dense inside a 4-bit model, added to `llm_int8_skip_modules`.
    public var denseModules: [String] = []
    /// Layers replicated (`LayerReplicationPass`): the source layer of each new one, which sets
    /// `num_hidden_layers` and lists `layer_types` again.
    public var layerSources: [Int]?

    public init(directory: String) { self.directory = directory }
}
