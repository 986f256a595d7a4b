/// A Thompson NFA for a `RegexNode`, run by simulation: every reachable state is tracked at once, so a
/// run visits each (position, instruction) pair at most once and takes O(text length × program size)
/// time whatever the pattern (no backtracking, so `(a*)*b` or `(.*.*)*X` cost the same as `ab`).
///
/// A lookaround is its own program, run once over the whole text before the program that uses it, which
/// then reads its answer per position: a lookahead runs backwards over a reversed program (a match may
/// start at every position), a lookbehind forwards (Python requires it to be fixed-width, so a match
/// ending at a position starts exactly its width earlier).
struct RegexProgram: Sendable {
    enum Instruction: Sendable {
        /// Consume one scalar in `sets[index]`, continue at the next instruction.
        case consume(Int)
        /// Continue at both.
        case split(Int, Int)
        case jump(Int)
        /// Continue at the next instruction if the anchor holds here.
        case anchor(RegexNode.Anchor)
        /// Continue at the next instruction if lookaround `index` succeeds here (fails, when negated).
        case look(Int, negated: Bool)
        case accept
    }

    /// A lookaround's program: a reversed program for a lookahead, a forward one for a lookbehind.
    struct Look: Sendable {
        var program: RegexProgram
        var behind: Bool
    }

    var instructions: [Instruction] = []
    var sets: [RegexScalarSet] = []

    /// The number of instructions `node` compiles to, saturating (so size checks come before any expansion).
    static func size(of node: RegexNode) -> Int {
        func add(_ a: Int, _ b: Int) -> Int { let (r, o) = a.addingReportingOverflow(b); return o ? Int.max : r }
        func mul(_ a: Int, _ b: Int) -> Int { let (r, o) = a.multipliedReportingOverflow(by: b); return o ? Int.max : r }
        switch node {
        case .set, .anchor: return 1
        case let .sequence(items): return items.reduce(0) { add($0, size(of: $1)) }
        case let .alternation(branches): return branches.reduce(0) { add($0, add(size(of: $1), 2)) }
        case let .repetition(n, min, max):
            let s = size(of: n)
            guard let max else { return add(mul(s, min), add(s, 2)) }
            return add(mul(s, min), mul(add(s, 1), max - min))
        case let .look(sub, _, _): return add(size(of: sub), 2)
        }
    }

    /// Compiles `node` (with its lookarounds appended to `looks`, innermost first).
    /// - Parameter reversed: build the program for the reversed text (sequences run backwards).
    static func compile(_ node: RegexNode, reversed: Bool, looks: inout [Look]) -> RegexProgram {
        var p = RegexProgram()
        p.emit(node, reversed: reversed, looks: &looks)
        p.instructions.append(.accept)
        return p
    }

    private mutating func emit(_ node: RegexNode, reversed: Bool, looks: inout [Look]) {
        switch node {
        case let .set(s):
            sets.append(s)
            instructions.append(.consume(sets.count - 1))
        case let .sequence(items):
            for item in reversed ? items.reversed() : items { emit(item, reversed: reversed, looks: &looks) }
        case let .alternation(branches):
            var jumps: [Int] = []
            for (k, branch) in branches.enumerated() {
                if k == branches.count - 1 {
                    emit(branch, reversed: reversed, looks: &looks)
                } else {
                    let split = instructions.count
                    instructions.append(.split(split + 1, -1))
                    emit(branch, reversed: reversed, looks: &looks)
                    jumps.append(instructions.count)
                    instructions.append(.jump(-1))
                    instructions[split] = .split(split + 1, instructions.count)
                }
            }
            for j in jumps { instructions[j] = .jump(instructions.count) }
        case let .repetition(item, min, max):
            for _ in 0..<min { emit(item, reversed: reversed, looks: &looks) }
            if let max {
                var splits: [Int] = []
                for _ in min..<max {
                    splits.append(instructions.count)
                    instructions.append(.split(instructions.count + 1, -1))
                    emit(item, reversed: reversed, looks: &looks)
                }
                for s in splits { instructions[s] = .split(s + 1, instructions.count) }
            } else {
                let loop = instructions.count
                instructions.append(.split(loop + 1, -1))
                emit(item, reversed: reversed, looks: &looks)
                instructions.append(.jump(loop))
                instructions[loop] = .split(loop + 1, instructions.count)
            }
        case let .anchor(a):
            instructions.append(.anchor(a))
        case let .look(sub, behind, negated):
            let program = RegexProgram.compile(sub, reversed: !behind, looks: &looks)
            looks.append(Look(program: program, behind: behind))
            instructions.append(.look(looks.count - 1, negated: negated))
        }
    }

    /// Where runs of the program accept.
    /// - Parameters:
    ///   - text: the whole text (anchors and lookarounds see all of it).
    ///   - lookResults: `lookResults[k][i]`: whether lookaround `k` matches at position `i`.
    ///   - forward: consume left to right (a reversed program runs with `forward: false`).
    ///   - start: the only start position, or nil to start at every position.
    ///   - stopAtFirst: return as soon as any position accepts.
    ///   - visits: counts instruction visits, for tests of the bound: at most one visit of each
    ///     instruction per text position, so (text.count + 1) × instructions.count in all.
    /// - Returns: for each position 0...text.count, whether some run accepted there.
    func run(_ text: [Unicode.Scalar], lookResults: [[Bool]], forward: Bool, start: Int?, stopAtFirst: Bool = false,
             visits: UnsafeMutablePointer<Int>? = nil) -> [Bool] {
        let n = text.count
        var accepted = [Bool](repeating: false, count: n + 1)
        var mark = [Int](repeating: -1, count: instructions.count)
        var threads: [Int] = []
        var seeds: [Int] = []
        var stack: [Int] = []
        let first = start ?? (forward ? 0 : n)
        var pos = first
        var step = 0
        while true {
            if start == nil || step == 0 { seeds.append(0) }
            threads.removeAll(keepingCapacity: true)
            stack.append(contentsOf: seeds.reversed())
            seeds.removeAll(keepingCapacity: true)
            while let pc = stack.popLast() {
                if mark[pc] == step { continue }
                mark[pc] = step
                visits?.pointee += 1
                switch instructions[pc] {
                case .consume: threads.append(pc)
                case let .split(a, b):
                    stack.append(b)
                    stack.append(a)
                case let .jump(a): stack.append(a)
                case let .anchor(a): if Self.holds(a, at: pos, in: text) { stack.append(pc + 1) }
                case let .look(k, negated): if lookResults[k][pos] != negated { stack.append(pc + 1) }
                case .accept:
                    accepted[pos] = true
                    if stopAtFirst { return accepted }
                }
            }
            guard forward ? pos < n : pos > 0 else { break }
            let c = text[forward ? pos : pos - 1]
            for pc in threads {
                if case let .consume(s) = instructions[pc], sets[s].contains(c) { seeds.append(pc + 1) }
            }
            if start != nil && seeds.isEmpty { break }
            pos += forward ? 1 : -1
            step += 1
        }
        return accepted
    }

    /// Whether `anchor` holds at `pos` (Python 3.11 semantics, no MULTILINE).
    static func holds(_ anchor: RegexNode.Anchor, at pos: Int, in text: [Unicode.Scalar]) -> Bool {
        let n = text.count
        switch anchor {
        case .start: return pos == 0
        case .endOfString: return pos == n
        case .end: return pos == n || (pos == n - 1 && text[n - 1] == "\n")
        case .wordBoundary, .notWordBoundary:
            if n == 0 { return false }
            let before = pos > 0 && RegexScalarSet.isWord(text[pos - 1])
            let after = pos < n && RegexScalarSet.isWord(text[pos])
            return (before != after) == (anchor == .wordBoundary)
        }
    }
}
