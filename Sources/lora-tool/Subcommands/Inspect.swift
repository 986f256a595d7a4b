import ArgumentParser
import Foundation
import LoRACore
import SafeTensors

extension LoraTool {
    /// `lora-tool inspect`: what is in a checkpoint or adapter, from its headers.
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Describe a model, adapter or training checkpoint (headers only).",
            discussion: """
                PATH is a .safetensors file, a *.safetensors.index.json, a model directory, or a PEFT \
                adapter directory (adapter_config.json + adapter_model.safetensors). Reports tensors, \
                parameters, bytes, dtypes, metadata and module families; for adapters also the dialect, \
                ranks, alpha, the scale of every module, targets, layers, DoRA, embedding LoRA and \
                full replacement tensors.
                """)

        @Argument(help: "Checkpoint file, index json, model directory or adapter directory.")
        var path: String

        @Option(help: "Base model to check the adapter against (shapes, parameter share).")
        var base: String?

        @Flag(help: "List every tensor (name, dtype, shape, bytes).")
        var tensors = false

        @Flag(help: "Print the report as JSON (stable keys, see the man page).")
        var json = false

        @OptionGroup var scale: ScaleArguments

        func run() throws {
            let report = try LoRACore.Inspect.run(path: try ModelSpecs.resolve(path), base: try base.map { try ModelSpecs.resolve($0) }, scale: scale.override)
            if json {
                Render.printJSON(jsonReport(report))
            } else {
                print(text(report))
            }
            if let b = report.base, !b.problems.isEmpty { throw ExitCode.failure }
        }

        func text(_ r: InspectReport) -> String {
            var rows: [[String]] = []
            rows.append(["files", r.files.joined(separator: ", ")])
            rows.append(["tensors", "\(r.tensorCount) (\(Render.count(r.parameterCount)) parameters, \(Render.bytes(r.bytes)))"])
            rows.append(["dtypes", r.dtypes.map { "\($0.dtype) ×\($0.tensors)" }.joined(separator: ", ")])
            if !r.metadata.isEmpty { rows.append(["metadata", r.metadata.map { "\($0.key)=\($0.value)" }.joined(separator: ", ")]) }
            rows.append(["modules", r.families.map { "\($0.family) ×\($0.count)" }.joined(separator: ", ")])
            rows.append(["layers", "\(r.layerCount)"])
            if let q = r.quantization {
                rows.append(["4-bit", "\(q.weights) bitsandbytes weights, \(q.quantTypes.joined(separator: ", ")), blocksize \(q.blocksizes.map(String.init).joined(separator: ", ")), double quantization \(q.doubleQuantization ? "yes" : "no"), compute dtype \(q.computeDType)"])
                rows.append(["4-bit size", "\(Render.bytes(q.quantizedBytes)) instead of \(Render.bytes(q.denseBytes)) dense (\(String(format: "%.1f", Double(q.denseBytes) / Double(max(q.quantizedBytes, 1))))× smaller)"])
            }
            if let a = r.adapter {
                rows.append(["dialect", a.dialect])
                rows.append(["rank", a.ranks.map(String.init).joined(separator: ", ")])
                if let alpha = a.alpha { rows.append(["alpha", Render.number(alpha)]) }
                rows.append(["scale rule", a.scaleRule])
                let scales = Set(a.modules.compactMap(\.scale)).sorted()
                if !scales.isEmpty { rows.append(["scales", scales.map(Render.number).joined(separator: ", ")]) }
                rows.append(["targets", a.targetSuffixes.joined(separator: ", ")])
                rows.append(["layers covered", a.layers.map(String.init).joined(separator: ", ")])
                rows.append(["DoRA", a.dora ? "yes" : "no"])
                rows.append(["embedding LoRA", a.embeddingLoRA ? "yes" : "no"])
                if !a.replacements.isEmpty { rows.append(["replaces", a.replacements.joined(separator: ", ")]) }
                if !a.untargeted.isEmpty { rows.append(["not targeted", a.untargeted.joined(separator: ", ") + " (config excludes them; not merged)"]) }
            }
            if let b = r.base {
                rows.append(["base", b.basePath])
                rows.append(["adapter share", String(format: "%.4f%% (%@ of %@ parameters)", b.percent, Render.count(b.adapterParameters), Render.count(b.baseParameters))])
                rows.append(["base match", b.problems.isEmpty ? "every module finds its base tensor with matching shape" : "\(b.problems.count) problem(s)"])
            }
            var out = "\(Render.escaped(r.path)): \(r.kind.rawValue)\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] })
            if let a = r.adapter, !a.modules.isEmpty {
                out += "\n\n" + Render.table([["  module", "kind", "rank", "alpha", "scale", "DoRA"]] + a.modules.map {
                    ["  " + $0.module, $0.kind, "\($0.rank)", $0.alpha.map(Render.number) ?? "?", $0.scale.map(Render.number) ?? "?", $0.dora ? "yes" : ""]
                })
            }
            if let b = r.base, !b.problems.isEmpty {
                out += "\n\n" + b.problems.map { "  mismatch: " + Render.escaped($0) }.joined(separator: "\n")
            }
            if tensors {
                out += "\n\n" + Render.table([["  tensor", "dtype", "shape", "bytes"]] + r.tensors.map {
                    ["  " + $0.name, $0.dtype.rawValue, "[" + $0.shape.map(String.init).joined(separator: ", ") + "]", "\($0.byteCount)"]
                })
            }
            return out
        }

        func jsonReport(_ r: InspectReport) -> JSONValue {
            var root: [(key: String, value: JSONValue)] = [
                ("path", .string(r.path)),
                ("kind", .string(r.kind.rawValue)),
                ("files", Render.json(r.files)),
                ("tensor_count", Render.json(r.tensorCount)),
                ("parameter_count", Render.json(r.parameterCount)),
                ("bytes", Render.json(r.bytes)),
                ("dtypes", .object(r.dtypes.map { ($0.dtype, .object([("tensors", Render.json($0.tensors)), ("parameters", Render.json($0.parameters))])) })),
                ("metadata", .object(r.metadata.map { ($0.key, .string($0.value)) })),
                ("module_families", .object(r.families.map { ($0.family, Render.json($0.count)) })),
                ("layer_count", Render.json(r.layerCount)),
            ]
            if let a = r.adapter {
                root.append(("adapter", .object([
                    ("dialect", .string(a.dialect)),
                    ("ranks", .array(a.ranks.map { Render.json($0) })),
                    ("lora_alpha", a.alpha.map(Render.json) ?? .null),
                    ("use_rslora", .bool(a.useRslora)),
                    ("scale_rule", .string(a.scaleRule)),
                    ("target_suffixes", Render.json(a.targetSuffixes)),
                    ("layers", .array(a.layers.map { Render.json($0) })),
                    ("dora", .bool(a.dora)),
                    ("embedding_lora", .bool(a.embeddingLoRA)),
                    ("replacements", Render.json(a.replacements)),
                    ("not_targeted", Render.json(a.untargeted)),
                    ("modules", .array(a.modules.map {
                        .object([("module", .string($0.module)), ("kind", .string($0.kind)), ("rank", Render.json($0.rank)),
                                 ("alpha", $0.alpha.map(Render.json) ?? .null), ("scale", $0.scale.map(Render.json) ?? .null),
                                 ("dora", .bool($0.dora))])
                    })),
                ])))
            }
            if let q = r.quantization {
                root.append(("quantization", .object([
                    ("method", .string("bitsandbytes 4-bit")), ("weights", Render.json(q.weights)),
                    ("quant_types", Render.json(q.quantTypes)), ("blocksizes", .array(q.blocksizes.map { Render.json($0) })),
                    ("double_quantization", .bool(q.doubleQuantization)), ("compute_dtype", .string(q.computeDType)),
                    ("quantized_bytes", Render.json(q.quantizedBytes)), ("dense_bytes", Render.json(q.denseBytes)),
                ])))
            }
            if let b = r.base {
                root.append(("base", .object([
                    ("path", .string(b.basePath)),
                    ("base_parameters", Render.json(b.baseParameters)),
                    ("adapter_parameters", Render.json(b.adapterParameters)),
                    ("percent", Render.json(b.percent)),
                    ("problems", Render.json(b.problems)),
                ])))
            }
            if tensors {
                root.append(("tensors", .array(r.tensors.map {
                    .object([("name", .string($0.name)), ("dtype", .string($0.dtype.rawValue)),
                             ("shape", .array($0.shape.map { Render.json($0) })), ("bytes", Render.json($0.byteCount))])
                })))
            }
            return .object(root)
        }
    }
}
