/// What a GGUF header declares, validated against the file's size.
public struct GGUFHeader: Sendable {
    /// 2 or 3.
    public let version: UInt32
    /// Metadata in file order.
    public let metadata: [(key: String, value: GGUFValue)]
    /// Tensor infos in file order (not necessarily data order).
    public let tensors: [GGUFTensorInfo]
    /// `general.alignment`, or 32.
    public let alignment: Int
    /// File offset just past the last tensor info.
    public let infoEnd: Int
    /// File offset of the data section: `infoEnd` rounded up to `alignment`.
    public let dataStart: Int
    /// Size of the whole file.
    public let fileSize: Int

    /// The value of `key`, or nil.
    public func value(_ key: String) -> GGUFValue? { metadata.first { $0.key == key }?.value }
}
