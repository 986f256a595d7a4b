import SafeTensors

/// The tensors of `store` whose names start with `prefix`, named without it: a ComfyUI checkpoint's
/// `model.diffusion_model.double_blocks.0.img_attn.qkv.weight` seen as the BFL file's
/// `double_blocks.0.img_attn.qkv.weight`. Bytes are the store's, untouched.
final class PrefixedStore: TensorStore, @unchecked Sendable {
    // `@unchecked Sendable`: immutable after init; the store is Sendable.
    let store: any TensorStore
    let prefix: String
    let names: [String]
    var path: String { store.path }

    init(_ store: any TensorStore, prefix: String) {
        self.store = store
        self.prefix = prefix
        // Dropping a common prefix keeps the UTF-8 order.
        names = store.names.filter { $0.hasPrefix(prefix) }.map { String($0.dropFirst(prefix.count)) }
    }

    func info(_ name: String) -> TensorInfo? {
        store.info(prefix + name).map { TensorInfo(name: name, dtype: $0.dtype, shape: $0.shape, dataOffsets: $0.dataOffsets) }
    }

    func bytes(of name: String) throws -> UnsafeRawBufferPointer { try store.bytes(of: prefix + name) }

    func read(_ name: String, bytes range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        try store.read(prefix + name, bytes: range, into: destination)
    }

    func release(_ name: String) { store.release(prefix + name) }

    func dropPages(_ bytes: UnsafeRawBufferPointer, of name: String) { store.dropPages(bytes, of: prefix + name) }
}
