import Foundation
import SafeTensors

/// One component of an LDM single-file checkpoint (`LDMNameMap`) seen under its diffusers tensor
/// names: `down_blocks.0.attentions.0.proj_in.weight` reads `model.diffusion_model.input_blocks.1.1.proj_in.weight`.
/// Shapes, dtypes and bytes are the file's (the VAE's mid-block attention weights keep their LDM
/// `[C, C, 1, 1]` shape). Adapter modules are resolved against it as against a component folder.
final class LDMComponentStore: TensorStore {
    let path: String
    let names: [String]
    private let file: any TensorStore
    private let keys: [String: String]

    /// - Parameters:
    ///   - file: the single file's tensors, under their LDM keys.
    ///   - component: `unet`, `text_encoder` or `vae`.
    init(_ file: any TensorStore, map: LDMNameMap, component: String) {
        self.file = file
        let tensors = map.tensors(of: component)
        names = tensors.map(\.name)
        keys = Dictionary(uniqueKeysWithValues: tensors.map { ($0.name, $0.key) })
        path = file.path + " (" + component + ")"
    }

    private func key(_ name: String) throws -> String {
        guard let key = keys[name] else { throw SafeTensorsError.tensorNotFound(tensor: name, in: path) }
        return key
    }

    func info(_ name: String) -> TensorInfo? {
        guard let key = keys[name], var info = file.info(key) else { return nil }
        info.name = name
        return info
    }

    func bytes(of name: String) throws -> UnsafeRawBufferPointer { try file.bytes(of: try key(name)) }

    func read(_ name: String, bytes range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        try file.read(try key(name), bytes: range, into: destination)
    }

    func release(_ name: String) { keys[name].map(file.release) }

    func dropPages(_ bytes: UnsafeRawBufferPointer, of name: String) { keys[name].map { file.dropPages(bytes, of: $0) } }
}
