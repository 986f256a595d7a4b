/// What `lora-tool inspect` reports about a GGUF file, from its header only.
public struct GGUFInspectReport: Sendable {
    /// Tensors, elements and bytes of one ggml type.
    public struct TypeSummary: Sendable, Equatable {
        public var type: GGMLType
        public var tensors: Int
        public var parameters: Int
        public var bytes: Int
    }

    public var path: String
    public var version: UInt32
    /// `general.architecture`, when it is a string.
    public var architecture: String?
    /// `general.name`, when it is a string.
    public var name: String?
    /// `general.file_type` (llama.cpp's `llama_ftype`) and its name, e.g. 15, "MOSTLY_Q4_K_M".
    public var fileType: Int64?
    public var fileTypeName: String?
    /// A split model's shard (`GGUFSplit`): its 1-based number, the shard count and the model's
    /// tensors in all shards, from `split.no`, `split.count` and `split.tensors.count`; nil for a
    /// file without them.
    public var split: (number: Int, count: Int, tensors: Int?)?
    public var alignment: Int
    public var fileSize: Int
    public var dataStart: Int
    public var tensorCount: Int
    public var parameterCount: Int
    /// Bytes of all tensors' data (without padding).
    public var bytes: Int
    /// One entry per ggml type present, in type-number order.
    public var types: [TypeSummary]
    /// Every metadata key and value, in file order.
    public var metadata: [(key: String, value: GGUFValue)]
    /// Every tensor, in file order.
    public var tensors: [GGUFTensorInfo]

    /// Builds the report of the file at `path` whose header is `h`.
    public init(path: String, header h: GGUFHeader) {
        self.path = path
        version = h.version
        architecture = h.value("general.architecture")?.string
        name = h.value("general.name")?.string
        fileType = h.value("general.file_type")?.integer
        fileTypeName = fileType.flatMap { GGUFInspectReport.fileTypeNames[$0] }
        if let n = h.value(GGUFSplit.numberKey)?.integer, let c = h.value(GGUFSplit.countKey)?.integer {
            split = (Int(n) + 1, Int(c), h.value(GGUFSplit.tensorsCountKey)?.integer.map { Int($0) })
        }
        alignment = h.alignment
        fileSize = h.fileSize
        dataStart = h.dataStart
        tensorCount = h.tensors.count
        parameterCount = h.tensors.reduce(0) { $0 + $1.elementCount }
        bytes = h.tensors.reduce(0) { $0 + $1.byteCount }
        var byType: [GGMLType: TypeSummary] = [:]
        for t in h.tensors {
            byType[t.type, default: TypeSummary(type: t.type, tensors: 0, parameters: 0, bytes: 0)].tensors += 1
            byType[t.type]!.parameters += t.elementCount
            byType[t.type]!.bytes += t.byteCount
        }
        types = byType.values.sorted { $0.type.rawValue < $1.type.rawValue }
        metadata = h.metadata
        tensors = h.tensors
    }

    /// Reads only the header of `path` (`GGUFFile.readHeader`: nothing of the data is read or
    /// mapped) and builds its report.
    /// - Throws: `GGUFError`, or `SafeTensorsError` when the file cannot be opened or read.
    public static func inspect(path: String) throws -> GGUFInspectReport {
        GGUFInspectReport(path: path, header: try GGUFFile.readHeader(path: path))
    }

    /// llama.cpp's `llama_ftype` names (gguf-py `LlamaFileType`, gguf 0.19.0).
    public static let fileTypeNames: [Int64: String] = [
        0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0",
        9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L",
        14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S", 17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K",
        19: "MOSTLY_IQ2_XXS", 20: "MOSTLY_IQ2_XS", 21: "MOSTLY_Q2_K_S", 22: "MOSTLY_IQ3_XS", 23: "MOSTLY_IQ3_XXS",
        24: "MOSTLY_IQ1_S", 25: "MOSTLY_IQ4_NL", 26: "MOSTLY_IQ3_S", 27: "MOSTLY_IQ3_M", 28: "MOSTLY_IQ2_S",
        29: "MOSTLY_IQ2_M", 30: "MOSTLY_IQ4_XS", 31: "MOSTLY_IQ1_M", 32: "MOSTLY_BF16", 36: "MOSTLY_TQ1_0",
        37: "MOSTLY_TQ2_0", 38: "MOSTLY_MXFP4_MOE", 39: "MOSTLY_NVFP4", 40: "MOSTLY_Q1_0", 1024: "GUESSED",
    ]
}
