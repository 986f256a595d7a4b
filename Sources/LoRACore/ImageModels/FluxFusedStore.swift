import Foundation
import SafeTensors

/// A diffusers Flux transformer (`transformer/`) seen with its double and single blocks under Black
/// Forest Labs' names, each BFL weight its diffusers parts' rows concatenated (`FluxNameMap`):
/// `double_blocks.0.img_attn.qkv.weight` reads `transformer_blocks.0.attn.to_q.weight`, `.to_k.weight`
/// and `.to_v.weight` one after the other, `single_blocks.0.linear1.weight` also `proj_mlp.weight`.
/// Every other tensor (biases, embedders, `proj_out`) keeps its diffusers name. Nothing is copied: a
/// read of a byte range of a fused weight reads the matching rows of its parts. So `extract` sees the
/// modules sd-scripts' `networks/lora_flux.py` wraps, whatever layout the model is stored in.
final class FluxFusedStore: TensorStore {
    let path: String
    let names: [String]
    private let model: any TensorStore
    /// BFL weight name → (its info, its parts: diffusers weight name, first BFL row, rows).
    private let fused: [String: (info: TensorInfo, parts: [(name: String, row: Int, rows: Int)])]

    /// - Throws: `LoRACoreError.invalidRequest` when a fused module's parts differ in dtype or width,
    ///   or a part is not one block of rows.
    init(_ model: any TensorStore, map: FluxNameMap) throws {
        self.model = model
        path = model.path
        var fused: [String: (info: TensorInfo, parts: [(name: String, row: Int, rows: Int)])] = [:]
        var consumed = Set<String>()
        for (bfl, parts) in map.parts where bfl.hasPrefix("double_blocks.") || bfl.hasPrefix("single_blocks.") {
            var list: [(name: String, row: Int, rows: Int)] = []
            var dtype: DType?, width: Int?, total = 0
            for part in parts {
                let name = part.module + ".weight"
                guard let info = model.info(name), info.shape.count == 2, part.rows.count == 1, let range = part.rows.first, range.count == info.shape[0] else {
                    throw LoRACoreError.invalidRequest("\(model.path): '\(name)' is not one block of rows of BFL's \(bfl).weight")
                }
                guard dtype == nil || (dtype == info.dtype && width == info.shape[1]) else {
                    throw LoRACoreError.invalidRequest("\(model.path): the parts of BFL's \(bfl).weight differ in dtype or width ('\(name)')")
                }
                (dtype, width) = (info.dtype, info.shape[1])
                list.append((name, range.lowerBound, range.count))
                total = max(total, range.upperBound)
                consumed.insert(name)
            }
            guard let dtype, let width else { continue }
            let bytes = UInt64(TensorInfo.byteCount(dtype: dtype, shape: [total, width]) ?? 0)
            fused[bfl + ".weight"] = (TensorInfo(name: bfl + ".weight", dtype: dtype, shape: [total, width], dataOffsets: (0, bytes)), list.sorted { $0.row < $1.row })
        }
        self.fused = fused
        names = (model.names.filter { !consumed.contains($0) } + fused.keys).sorted(by: utf8Precedes)
    }

    /// The diffusers parts of a fused BFL weight: each one's module, first BFL row and row count, in row order.
    func parts(of name: String) -> [(module: String, row: Int, rows: Int)]? {
        fused[name]?.parts.map { (String($0.name.dropLast(".weight".count)), $0.row, $0.rows) }
    }

    func info(_ name: String) -> TensorInfo? { fused[name]?.info ?? model.info(name) }

    /// A fused weight is read by ranges only (`read`); any other tensor as the model stores it.
    func bytes(of name: String) throws -> UnsafeRawBufferPointer {
        guard fused[name] == nil else { throw LoRACoreError.invalidRequest("\(path): '\(name)' is fused from its diffusers parts and is read by ranges") }
        return try model.bytes(of: name)
    }

    func read(_ name: String, bytes range: Range<Int>, into destination: UnsafeMutableRawPointer) throws {
        guard let (info, parts) = fused[name] else { return try model.read(name, bytes: range, into: destination) }
        let rowBytes = info.byteCount / max(1, info.shape[0])
        for part in parts {
            let start = part.row * rowBytes, end = start + part.rows * rowBytes
            let lo = max(start, range.lowerBound), hi = min(end, range.upperBound)
            guard lo < hi else { continue }
            try model.read(part.name, bytes: (lo - start)..<(hi - start), into: destination + (lo - range.lowerBound))
        }
    }

    func release(_ name: String) {
        if let parts = fused[name]?.parts { parts.forEach { model.release($0.name) } } else { model.release(name) }
    }

    func dropPages(_ bytes: UnsafeRawBufferPointer, of name: String) {
        if fused[name] == nil { model.dropPages(bytes, of: name) }
    }
}
