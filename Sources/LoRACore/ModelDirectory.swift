import Foundation
import SafeTensors

/// The model-directory writer shared by the commands that write tensors one after another
/// (dequantize, extract --checkpoint's base, requantize): shards planned over the tensors in byte
/// order of their names (greedy, at most `maxShardSize` bytes of data each, transformers' file
/// names), each tensor's bytes supplied in order by `fill`, then `model.safetensors.index.json` when
/// there is more than one shard. Merge fills the same layout from several threads (`ChunkedMerge`).
enum ModelDirectory {
    /// Writes `tensors` into the staging directory of `output`.
    /// - Parameter fill: writes the bytes of the tensor it is given through the writer (`write` or
    ///   `copy`), called once per tensor in file order.
    /// - Returns: the names of the files written (shards, then the index).
    /// - Throws: what `fill` throws; `SafeTensorsError` from writing.
    static func writeShards(_ tensors: [TensorInfo], maxShardSize: Int, into output: AtomicOutput,
                            _ fill: (TensorInfo, SafeTensorsWriter) throws -> Void) throws -> [String] {
        let plan = ShardPlan(tensors: tensors.sorted { utf8Precedes($0.name, $1.name) }, maxShardSize: maxShardSize)
        var files: [String] = []
        for shard in plan.shards {
            let writer = try SafeTensorsWriter(path: output.path(for: shard.fileName), tensors: shard.tensors)
            while let t = writer.nextTensor { try fill(t, writer) }
            try writer.finish()
            files.append(shard.fileName)
        }
        if let index = plan.index {
            try SideFiles.write(output.path(for: "model.safetensors.index.json"), bytes: index.serialized())
            files.append("model.safetensors.index.json")
        }
        return files
    }
}
