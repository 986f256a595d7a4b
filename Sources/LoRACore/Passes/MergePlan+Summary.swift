extension MergePlan {
    /// What a merge report says of the plan: adapter modules per family with their distinct scales
    /// (families sorted, scales sorted), how many base tensors are merged (weights and biases), and
    /// which are replaced (in name order).
    var summary: (families: [MergeReport.Family], merged: Int, replaced: [String]) {
        var families: [String: (Int, Set<Double>)] = [:]
        var merged = 0
        var replaced: [String] = []
        for name in names {
            switch action(for: name) {
            case let .merge(cs, _):
                merged += 1
                for c in cs {
                    families[c.module.family, default: (0, [])].0 += 1
                    families[c.module.family]!.1.insert(c.module.scale)
                }
            case .replace: replaced.append(name)
            case .bias: merged += 1
            case .copy: break
            }
        }
        return (families.keys.sorted().map { MergeReport.Family(family: $0, modules: families[$0]!.0, scales: families[$0]!.1.sorted()) },
                merged, replaced)
    }
}
