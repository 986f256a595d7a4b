import Foundation
import SafeTensors

/// One component of a single-file checkpoint (`LDMNameMap`) seen under its diffusers tensor names:
/// `down_blocks.0.attentions.0.proj_in.weight` reads `model.diffusion_model.input_blocks.1.1.proj_in.weight`.
/// Shapes, dtypes and bytes are the file's (the VAE's mid-block attention weights keep their LDM
/// `[C, C, 1, 1]` shape); a tensor that is a row block of a fused one (`FileTensorPart`: SDXL's
/// OpenCLIP q/k/v in `attn.in_proj_weight`) has that block's shape and bytes; a transposed one has the
/// transposed shape and no bytes (reading it throws). Adapter modules are resolved against it as
/// against a component folder.
final class LDMComponentStore: TensorStore {
    let path: String
    let names: [String]
    private let file: any TensorStore
    private let parts: [String: FileTensorPart]

    /// - Parameters:
    ///   - file: the single file's tensors, under their own keys.
    ///   - component: `unet`, `text_encoder`, `text_encoder_2` or `vae`.
    init(_ file: any TensorStore, map: LDMNameMap, component: String) {
        self.file = file
        let tensors = map.tensors(of: component)
        names = tensors.map(\.name)
        parts = Dictionary(uniqueKeysWithValues: tensors.map { ($0.name, $0.part) })
        path = file.path + " (" + component + ")"
    }

    /// The file key of `name` and the byte range of it that is `name`'s (nil: the whole tensor).
    private func location(_ name: String) throws -> (key: String, bytes: Range<Int>?) {
        guard let part = parts[name], let info = file.info(part.key) else { throw SafeTensorsError.tensorNotFound(tensor: name, in: path) }
        if part.transposed {
            throw LoRACoreError.invalidRequest("\(path): '\(name)' is '\(part.key)' transposed, which is not read as \(name)")
        }
        guard part.rows != nil else { return (part.key, nil) }
        guard let rows = part.rows(of: info.shape), let first = info.shape.first, first > 0 else { throw SafeTensorsError.tensorNotFound(tensor: name, in: path) }
        let rowBytes = info.byteCount / first
        return (part.key, (rows.lowerBound * rowBytes)..<(rows.upperBound * rowBytes))
    }

    /// The single file and its key when `name` is a file tensor transposed (`text_projection`), whose
    /// bytes are not read under the diffusers name; nil otherwise.
    func transposedSource(of name: String) -> (file: any TensorStore, key: String)? {
        guard let part = parts[name], part.transposed else { return nil }
        return (file, part.key)
    }

    func info(_ name: String) -> TensorInfo? {
        guard let part = parts[name], var info = file.info(part.key) else { return nil }
        info.name = name
        if part.transposed { info.shape.reverse() }
        if part.rows != nil {
            guard let rows = part.rows(of: info.shape), let first = info.shape.first, first > 0 else { return nil }
            let rowBytes = UInt64(info.byteCount / first), begin = info.dataOffsets.begin + UInt64(rows.lowerBound) * rowBytes
            info.shape[0] = rows.count
            info.dataOffsets = (begin, begin + UInt64(rows.count) * rowBytes)
        }
        return info
    }

    func bytes(of name: String) throws -> UnsafeRawBufferPointer {
        let (key, range) = try location(name)
        let all = try file.bytes(of: key)
        return range.map { UnsafeRawBufferPointer(rebasing: all[$0]) } ?? all
    }

    func read(_ name: String, bytes range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        let (key, part) = try location(name)
        let start = part?.lowerBound ?? 0
        try file.read(key, bytes: (range.lowerBound + start)..<(range.upperBound + start), into: destination)
    }

    func release(_ name: String) { parts[name].map { file.release($0.key) } }

    func dropPages(_ bytes: UnsafeRawBufferPointer, of name: String) { parts[name].map { file.dropPages(bytes, of: $0.key) } }
}
