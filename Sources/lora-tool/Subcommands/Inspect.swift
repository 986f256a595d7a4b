import ArgumentParser
import Foundation
import GGUF
import LoRACore
import SafeTensors

extension LoraTool {
    /// `lora-tool inspect`: what is in a checkpoint or adapter, from its headers.
    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Describe a model, adapter or training checkpoint (headers only).",
            discussion: """
                PATH is a .safetensors file, a *.safetensors.index.json, a model directory, a PEFT \
                adapter directory (adapter_config.json + adapter_model.safetensors), a kohya, LyCORIS \
                or diffusers-format LoRA file, a diffusers pipeline folder (model_index.json), or a \
                GGUF file (recognized by its magic or a .gguf name). Reports tensors, \
                parameters, bytes, dtypes, metadata and module families; for adapters also the dialect, \
                ranks, alpha, the scale of every module, targets, layers, DoRA, embedding LoRA and \
                full replacement tensors. For image models (pipelines, their unet/ or transformer/ \
                folders, SD single-file checkpoints, kohya and diffusers LoRAs): the family (sd1, sd2, sdxl, flux) and what showed \
                it, a pipeline's components, a LoRA's modules, ranks and alphas per component. For GGUF: version, architecture, name, file type, alignment, \
                the shard of a split model (one file's header: give each shard to see each), tensors \
                and bytes per ggml type, and the metadata (arrays as their type and length).
                """)

        @Argument(help: "Checkpoint file, index json, model directory, adapter directory or file, diffusers pipeline folder or GGUF file.")
        var path: String

        @Option(help: "Base model to check the adapter against (shapes, parameter share).")
        var base: String?

        @Flag(help: "List every tensor (name, dtype, shape, bytes).")
        var tensors = false

        @Flag(help: "Print the report as JSON (stable keys, see the man page).")
        var json = false

        @OptionGroup var scale: ScaleArguments

        func run() throws {
            if GGUFFile.looksLikeGGUF(path: path) {
                try runGGUF()
                return
            }
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
            if let q = r.blockScaled {
                rows.append(["quantized", "\(q.scheme): \(q.weights) weights" + (q.partialWeights > 0 ? " (\(q.partialWeights) with partial edge blocks)" : "")
                    + ", compute dtype \(q.computeDType), \(Render.bytes(q.quantizedBytes)) (\(Render.bytes(q.denseBytes)) dense)"])
            }
            if let q = r.quantization {
                rows.append(["4-bit", "\(q.weights) bitsandbytes weights, \(q.quantTypes.joined(separator: ", ")), blocksize \(q.blocksizes.map(String.init).joined(separator: ", ")), double quantization \(q.doubleQuantization ? "yes" : "no"), compute dtype \(q.computeDType)"])
                rows.append(["4-bit size", "\(Render.bytes(q.quantizedBytes)) instead of \(Render.bytes(q.denseBytes)) dense (\(String(format: "%.1f", Double(q.denseBytes) / Double(max(q.quantizedBytes, 1))))× smaller)"])
            }
            if let image = r.imageModel {
                if let f = image.family { rows.append(["family", "\(f.name) (\(f.evidence))"]) }
                for c in image.components {
                    rows.append(["component", "\(c.name): \(c.className ?? "?"), \(c.tensors) tensors, \(Render.count(c.parameters)) parameters"])
                }
                for t in image.targets {
                    rows.append(["component", "\(t.component): \(t.modules) modules, rank \(t.ranks.map(String.init).joined(separator: ", ")), alpha \(t.alphas.map(Render.number).joined(separator: ", "))"])
                }
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
                rows.append(["DoRA", a.dora ? "yes" + (a.lycorisDoRA.isEmpty ? "" : " (LyCORIS, norms \(a.lycorisDoRA.joined(separator: " and ")))") : "no"])
                rows.append(["embedding LoRA", a.embeddingLoRA ? "yes" : "no"])
                if !a.replacements.isEmpty { rows.append(["replaces", a.replacements.joined(separator: ", ")]) }
                if !a.untargeted.isEmpty { rows.append(["not targeted", a.untargeted.joined(separator: ", ") + " (config excludes them; not merged)"]) }
                if let r = a.residualInitialisation {
                    rows.append(["initialisation", "\(r.method.name) (init_lora_weights '\(r.value)'): trained on PEFT's residual model; merge into that model with --residual-base"
                        + (r.method.convertsToLoRA ? ", or convert --initial INITIAL_ADAPTER for the original model" : "")])
                }
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
                    ("residual_initialisation", a.residualInitialisation.map { .string($0.value) } ?? .null),
                    ("modules", .array(a.modules.map {
                        .object([("module", .string($0.module)), ("kind", .string($0.kind)), ("rank", Render.json($0.rank)),
                                 ("alpha", $0.alpha.map(Render.json) ?? .null), ("scale", $0.scale.map(Render.json) ?? .null),
                                 ("dora", .bool($0.dora))])
                    })),
                ])))
            }
            if let image = r.imageModel {
                root.append(("image_model", .object([
                    ("family", image.family.map { .string($0.name) } ?? .null),
                    ("family_evidence", image.family.map { .string($0.evidence) } ?? .null),
                    ("components", .array(image.components.map {
                        .object([("name", .string($0.name)), ("class_name", $0.className.map { .string($0) } ?? .null),
                                 ("tensors", Render.json($0.tensors)), ("parameters", Render.json($0.parameters))])
                    })),
                    ("component_targets", .array(image.targets.map {
                        .object([("component", .string($0.component)), ("modules", Render.json($0.modules)),
                                 ("ranks", .array($0.ranks.map { Render.json($0) })), ("alphas", .array($0.alphas.map { Render.json($0) }))])
                    })),
                ])))
            }
            if let q = r.blockScaled {
                root.append(("quantization", .object([
                    ("method", .string(q.scheme)), ("weights", Render.json(q.weights)),
                    ("partial_weights", Render.json(q.partialWeights)), ("compute_dtype", .string(q.computeDType)),
                    ("quantized_bytes", Render.json(q.quantizedBytes)), ("dense_bytes", Render.json(q.denseBytes)),
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


extension LoraTool.Inspect {
    /// `inspect` of a GGUF file: the header only (`GGUFInspectReport`), as text or JSON.
    func runGGUF() throws {
        if base != nil { throw ValidationError("--base is not supported for GGUF files yet") }
        let report = try GGUFInspectReport.inspect(path: path)
        if json {
            Render.printJSON(ggufJSON(report))
        } else {
            print(ggufText(report))
        }
    }

    /// Longest metadata string shown in the text report (chat templates run to kilobytes).
    static let ggufStringLimit = 80

    func ggufText(_ r: GGUFInspectReport) -> String {
        var rows: [[String]] = []
        if let a = r.architecture { rows.append(["architecture", a]) }
        if let n = r.name { rows.append(["name", n]) }
        if let t = r.fileType { rows.append(["file type", r.fileTypeName.map { "\($0) (\(t))" } ?? "\(t)"]) }
        rows.append(["alignment", "\(r.alignment)"])
        if let s = r.split {
            rows.append(["split", "shard \(s.number) of \(s.count)" + (s.tensors.map { ", \($0) tensors in the model" } ?? "")
                         + (s.number == 1 ? "" : " (its metadata is in shard 1)")])
        }
        rows.append(["tensors", "\(r.tensorCount) (\(Render.count(r.parameterCount)) parameters, \(Render.bytes(r.bytes)))"])
        rows.append(["types", r.types.map { "\($0.type.name) ×\($0.tensors) (\(Render.bytes($0.bytes)))" }.joined(separator: ", ")])
        rows.append(["metadata", "\(r.metadata.count) keys"])
        var out = "\(Render.escaped(r.path)): GGUF v\(r.version)\n" + Render.table(rows.map { ["  " + $0[0], $0[1]] })
        if !r.metadata.isEmpty {
            out += "\n\n" + Render.table([["  key", "value"]] + r.metadata.map { ["  " + $0.key, Self.shortText($0.value)] })
        }
        if tensors {
            out += "\n\n" + Render.table([["  tensor", "type", "dims", "bytes"]] + r.tensors.map {
                ["  " + $0.name, $0.type.name, "[" + $0.dims.map(String.init).joined(separator: ", ") + "]", "\($0.byteCount)"]
            })
        }
        return out
    }

    /// A metadata value on one line: long strings cut at `ggufStringLimit` characters.
    static func shortText(_ v: GGUFValue) -> String {
        if let s = v.string, s.count > ggufStringLimit { return "\"" + s.prefix(ggufStringLimit) + "…\" (\(s.utf8.count) bytes)" }
        return v.summary
    }

    func ggufJSON(_ r: GGUFInspectReport) -> JSONValue {
        var root: [(key: String, value: JSONValue)] = [
            ("path", .string(r.path)),
            ("kind", .string("gguf")),
            ("version", Render.json(Int(r.version))),
            ("architecture", r.architecture.map(JSONValue.string) ?? .null),
            ("name", r.name.map(JSONValue.string) ?? .null),
            ("file_type", r.fileType.map { .number(String($0)) } ?? .null),
            ("file_type_name", r.fileTypeName.map(JSONValue.string) ?? .null),
            ("alignment", Render.json(r.alignment)),
            ("split", r.split.map { s in
                .object([("shard", Render.json(s.number)), ("count", Render.json(s.count)), ("tensors", s.tensors.map { Render.json($0) } ?? .null)])
            } ?? .null),
            ("file_size", Render.json(r.fileSize)),
            ("data_start", Render.json(r.dataStart)),
            ("tensor_count", Render.json(r.tensorCount)),
            ("parameter_count", Render.json(r.parameterCount)),
            ("bytes", Render.json(r.bytes)),
            ("types", .object(r.types.map {
                ($0.type.name, .object([("tensors", Render.json($0.tensors)), ("parameters", Render.json($0.parameters)), ("bytes", Render.json($0.bytes))]))
            })),
            ("metadata", .object(r.metadata.map { ($0.key, Self.json($0.value)) })),
        ]
        if tensors {
            root.append(("tensors", .array(r.tensors.map {
                .object([("name", .string($0.name)), ("type", .string($0.type.name)),
                         ("dims", .array($0.dims.map { .number(String($0)) })), ("offset", .number(String($0.offset))),
                         ("bytes", Render.json($0.byteCount))])
            })))
        }
        return .object(root)
    }

    /// A metadata value as JSON: numbers, booleans and strings as themselves (non-finite floats as
    /// null); arrays as `{"element_type", "count"}` (a vocabulary holds 100k strings).
    static func json(_ v: GGUFValue) -> JSONValue {
        switch v {
        case let .float32(x): return x.isFinite ? .number("\(x)") : .null
        case let .float64(x): return x.isFinite ? .number("\(x)") : .null
        case let .bool(b): return .bool(b)
        case let .string(s): return .string(s)
        case let .array(t, items): return .object([("element_type", .string(t.name)), ("count", Render.json(items.count))])
        default: return .number(v.summary)
        }
    }
}
