// Semantic / part segmentation datasets on their real layouts (utils/sem_seg_dataset.py):
//
//   ade20k      ade20k/images/training/*.jpg, ade20k/annotations/training/<same>.png; label 0 -> ignore,
//               k -> class k - 1 (255 stays ignored); names: utils/ade20k_classes.json (embedded; a
//               ade20k/ade20k_classes.json or ade20k/synth_classes.json list in the tree overrides it)
//   cocostuff   cocostuff/train2017/*.png labels, coco/train2017/<same>.jpg images; label k -> class k,
//               classes whose name contains "-" and 255 ignored; names: utils/cocostuff_classes.txt
//               (embedded; cocostuff/cocostuff_classes.txt in the tree overrides it)
//   mapillary   mapillary/config_v2.0.json labels[].readable (lowercased), training/v2.0/labels/*.png,
//               training/images/<same>.jpg; label k -> class k (the "unlabeled" class is a class like any
//               other, as in the reference), 255 ignored
//   pascal_part vlpart/pascal_part/train.json (COCO, category "obj:part"), images
//               vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages/<file_name>
//   paco_lvis   vlpart/paco/annotations/paco_lvis_v1_train.json (COCO, category "obj" or "obj:part", "_(..."
//               suffixes cut), images coco/<file_name>
//
// Label datasets: the classes present in the label PNG (ascending) are the candidates, each target mask is
// label == class at the label's size. Part datasets: the image's annotations are the candidates; a part is
// named "obj part" or "the part of the obj" (50/50), masks are the annotations' segmentations. Candidates
// are sampled and allocated into questions as refer_seg (Allocation).
import Foundation
import PixelTensor

public final class SemSegReader: DatasetReader {
    public let dataset = "sem_seg"
    public let subset: String
    public let options: ReaderOptions
    public private(set) var indexSkips = SkipLog()
    /// The class names (label datasets) in class-id order.
    public let classes: [String]
    /// Where the class names came from (a file, or "embedded ...").
    public let classSource: String

    public static let names = ["ade20k", "cocostuff", "mapillary", "pascal_part", "paco_lvis"]

    struct LabelItem { let image: String; let label: String }
    struct PartAnn { let id: Int; let categoryID: Int; let segmentation: Result<COCOSegmentation, MaskError> }
    struct PartImage { let id: Int; let path: String; let height: Int; let width: Int; var anns: [PartAnn] }
    enum PartName { case whole(String), part(obj: String, part: String) }

    let labelItems: [LabelItem]
    /// Class id for each label byte value, -1 = ignored.
    let labelTable: [Int]
    let partImages: [PartImage]
    let partNames: [Int: PartName]
    let partFile: String

    public var count: Int { partFile.isEmpty ? labelItems.count : partImages.count }

    public init(datasetDir: String, name: String, options: ReaderOptions = ReaderOptions()) throws {
        guard Self.names.contains(name) else {
            throw DatasetError(file: datasetDir, "unknown sem_seg dataset \"\(name)\" (known: \(Self.names.joined(separator: ", ")))")
        }
        subset = name
        self.options = options
        let d = datasetDir
        var items: [LabelItem] = []
        var table = [Int](repeating: -1, count: 256)
        var classes: [String] = []
        var classSource = ""
        var partImages: [PartImage] = []
        var partNames: [Int: PartName] = [:]
        var partFile = ""
        switch name {
        case "ade20k":
            (classes, classSource) = try Self.adeClasses(d)
            let dir = d + "/ade20k/images/training"
            for f in try Self.list(dir, ext: ".jpg") {
                let stem = String(f.dropLast(4))
                items.append(LabelItem(image: dir + "/" + f, label: d + "/ade20k/annotations/training/\(stem).png"))
            }
            for v in 1..<255 { table[v] = v - 1 }
        case "cocostuff":
            (classes, classSource) = try Self.cocostuffClasses(d)
            let dir = d + "/cocostuff/train2017"
            for f in try Self.list(dir, ext: ".png") {
                let stem = String(f.dropLast(4))
                items.append(LabelItem(image: d + "/coco/train2017/\(stem).jpg", label: dir + "/" + f))
            }
            for v in 0..<255 { table[v] = v < classes.count && classes[v].contains("-") ? -1 : v }
        case "mapillary":
            let config = d + "/mapillary/config_v2.0.json"
            guard let top = try ReaderJSON.load(config) as? [String: Any], let labels = top["labels"] as? [Any] else {
                throw DatasetError(file: config, "needs a dict with a \"labels\" list")
            }
            for (i, l) in labels.enumerated() {
                guard let r = (l as? [String: Any])?["readable"] as? String else {
                    throw DatasetError(file: config, "labels[\(i)] has no \"readable\" string")
                }
                classes.append(r.lowercased())
            }
            classSource = config
            let dir = d + "/mapillary/training/v2.0/labels"
            for f in try Self.list(dir, ext: ".png") {
                let stem = String(f.dropLast(4))
                items.append(LabelItem(image: d + "/mapillary/training/images/\(stem).jpg", label: dir + "/" + f))
            }
            for v in 0..<255 { table[v] = v }
        default:
            partFile = name == "pascal_part" ? d + "/vlpart/pascal_part/train.json" : d + "/vlpart/paco/annotations/paco_lvis_v1_train.json"
            let imageRoot = name == "pascal_part" ? d + "/vlpart/pascal_part/VOCdevkit/VOC2010/JPEGImages" : d + "/coco"
            (partImages, partNames) = try Self.loadParts(partFile, imageRoot: imageRoot, pascal: name == "pascal_part")
            classSource = partFile
        }
        if partFile.isEmpty && items.isEmpty {
            throw DatasetError(file: name == "ade20k" ? d + "/ade20k/images/training" : (name == "cocostuff" ? d + "/cocostuff/train2017" : d + "/mapillary/training/v2.0/labels"), "no images")
        }
        if !partFile.isEmpty && partImages.isEmpty { throw DatasetError(file: partFile, "no images") }
        self.labelItems = items
        self.labelTable = table
        self.classes = classes
        self.classSource = classSource
        self.partImages = partImages
        self.partNames = partNames
        self.partFile = partFile
    }

    // MARK: index helpers

    static func list(_ dir: String, ext: String) throws -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir), isDir.boolValue else {
            throw DatasetError(file: dir, "no such directory")
        }
        do {
            return try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(ext) }.sorted()
        } catch {
            throw DatasetError(file: dir, "cannot list: \(error.localizedDescription)")
        }
    }

    static func adeClasses(_ d: String) throws -> ([String], String) {
        for f in ["ade20k_classes.json", "synth_classes.json"] {
            let p = d + "/ade20k/" + f
            guard FileManager.default.fileExists(atPath: p) else { continue }
            guard let list = try ReaderJSON.load(p) as? [Any], !list.isEmpty else { throw DatasetError(file: p, "needs a non-empty list of class names") }
            var out: [String] = []
            for (i, x) in list.enumerated() {
                guard let s = x as? String else { throw DatasetError(file: p, "entry \(i) is \(CocoJSON.typeName(x)), not a string") }
                out.append(s)
            }
            return (out, p)
        }
        return (SemSegClasses.ade20k, "embedded utils/ade20k_classes.json")
    }

    static func cocostuffClasses(_ d: String) throws -> ([String], String) {
        let p = d + "/cocostuff/cocostuff_classes.txt"
        guard FileManager.default.fileExists(atPath: p) else { return (SemSegClasses.cocostuff, "embedded utils/cocostuff_classes.txt") }
        guard let text = String(bytes: try Self.read(p), encoding: .utf8) else { throw DatasetError(file: p, "not UTF-8 text") }
        // readlines()[1:], each line stripped and cut after the last ": "
        var lines = text.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        let names = lines.dropFirst().map { l -> String in
            let s = l.trimmingCharacters(in: .whitespacesAndNewlines)
            return s.components(separatedBy: ": ").last ?? s
        }
        guard !names.isEmpty else { throw DatasetError(file: p, "no class lines after the header") }
        return (names, p)
    }

    static func read(_ p: String) throws -> [UInt8] {
        do { return try Image.readFile(p) } catch let e as ImageError { throw DatasetError(file: p, e.message) }
    }

    static func loadParts(_ file: String, imageRoot: String, pascal: Bool) throws -> ([PartImage], [Int: PartName]) {
        // The json is mapped and its lists parsed one element at a time (LVIS-sized files stay small).
        let data = try ReaderJSON.mapped(file)
        let members: [String: Range<Int>]
        do { members = try ReaderJSON.objectMemberRanges(data, file: file) } catch let e as DatasetError where e.message.hasPrefix("the top level") {
            throw DatasetError(file: file, "not a dict")
        }
        var names: [Int: PartName] = [:]
        try ReaderJSON.forEachElement(ofListAt: "categories", in: data, members: members, file: file) { i, c in
            guard let cd = c as? [String: Any], let id = CocoJSON.int(cd["id"]), let n = cd["name"] as? String else {
                throw DatasetError(file: file, "categories[\(i)] needs an integer \"id\" and a \"name\"")
            }
            let parts = n.trimmingCharacters(in: .whitespacesAndNewlines).components(separatedBy: ":")
            func cut(_ s: String) -> String { s.components(separatedBy: "_(").first ?? s }
            if pascal {
                guard parts.count == 2 else { throw DatasetError(file: file, "category \(id) \"\(n)\" is not \"object:part\"") }
                names[id] = .part(obj: parts[0], part: parts[1])
            } else if parts.count == 1 {
                names[id] = .whole(cut(parts[0]))
            } else if parts.count == 2 {
                names[id] = .part(obj: cut(parts[0]), part: cut(parts[1]))
            } else {
                throw DatasetError(file: file, "category \(id) \"\(n)\" has more than one \":\"")
            }
        }
        var images: [PartImage] = []
        var where_: [Int: Int] = [:]
        try ReaderJSON.forEachElement(ofListAt: "images", in: data, members: members, file: file) { i, x in
            guard let im = x as? [String: Any], let id = CocoJSON.int(im["id"]), let f = im["file_name"] as? String,
                  let h = CocoJSON.int(im["height"]), let w = CocoJSON.int(im["width"]), h > 0, w > 0 else {
                throw DatasetError(file: file, "images[\(i)] needs an integer \"id\", \"file_name\" and positive \"height\", \"width\"")
            }
            guard ReaderJSON.staysInside(f) else { throw DatasetError(file: file, "images[\(i)]: file_name \(f) leaves the image directory") }
            if where_[id] == nil { where_[id] = images.count; images.append(PartImage(id: id, path: imageRoot + "/" + f, height: h, width: w, anns: [])) }
            else { images[where_[id]!] = PartImage(id: id, path: imageRoot + "/" + f, height: h, width: w, anns: images[where_[id]!].anns) }
        }
        try ReaderJSON.forEachElement(ofListAt: "annotations", in: data, members: members, file: file, required: false) { i, x in
            guard let a = x as? [String: Any], let id = CocoJSON.int(a["id"]), let imageID = CocoJSON.int(a["image_id"]),
                  let cat = CocoJSON.int(a["category_id"]) else {
                throw DatasetError(file: file, "annotations[\(i)] needs integer \"id\", \"image_id\" and \"category_id\"")
            }
            guard let k = where_[imageID] else { return }
            let item = "annotation \(id)"
            let seg: Result<COCOSegmentation, MaskError>
            if let s = a["segmentation"] {
                do { seg = .success(try COCOSegmentation(json: s, item: item)) } catch let e as MaskError { seg = .failure(e) }
            } else {
                seg = .failure(MaskError(item: item, "has no \"segmentation\""))
            }
            images[k].anns.append(PartAnn(id: id, categoryID: cat, segmentation: seg))
        }
        return (images, names)
    }

    // MARK: samples

    public func sample(_ index: Int, seed: UInt64) throws -> DataSample {
        guard index >= 0, index < count else {
            throw SampleSkip(file: partFile.isEmpty ? classSource : partFile, "index \(index) out of range 0..<\(count)")
        }
        var rng = DataRNG.make(seed: seed, subset: subset, index: index)
        return partFile.isEmpty ? try labelSample(index, &rng) : try partSample(index, &rng)
    }

    func labelSample(_ index: Int, _ rng: inout RNG) throws -> DataSample {
        let item = labelItems[index]
        guard FileManager.default.fileExists(atPath: item.image) else { throw SampleSkip(file: item.image, "no such file") }
        let label: GrayImage
        do {
            label = try Image.loadLabels(item.label)
        } catch let e as ImageError {
            throw SampleSkip(file: item.label, "label map: \(e.message)")
        }
        var present = [Bool](repeating: false, count: 256)
        label.pixels.withUnsafeBufferPointer { p in for v in p { present[Int(v)] = true } }
        var ids = Set<Int>()
        for v in 0..<256 where present[v] && labelTable[v] >= 0 { ids.insert(labelTable[v]) }
        let classIDs = ids.sorted()
        if let bad = classIDs.first(where: { $0 >= classes.count }) {
            throw SampleSkip(file: item.label, "label class \(bad) has no name (\(classes.count) classes in \(classSource))")
        }
        guard !classIDs.isEmpty else { throw SampleSkip(file: item.label, "no usable class: every pixel is ignored") }

        let questions = Allocation.sampleAndAllocate(classIDs, options: options, rng: &rng)
        let conversations = Allocation.conversations(questions.map { $0.map { classes[$0] } }, options: options, rng: &rng)
        var targets: [SampleTarget] = []
        for c in questions.joined() {
            var m = BinaryMask(height: label.height, width: label.width)
            for i in 0..<label.pixels.count where labelTable[Int(label.pixels[i])] == c { m.data[i] = 1 }
            targets.append(SampleTarget(mask: RLE(encoding: m), name: classes[c], provenance: "class \(c)"))
        }
        return DataSample(dataset: dataset, subset: subset, index: index, imagePath: item.image, height: label.height,
                          width: label.width, conversations: conversations, targets: targets, source: item.label)
    }

    func partSample(_ index: Int, _ rng: inout RNG) throws -> DataSample {
        let im = partImages[index]
        guard FileManager.default.fileExists(atPath: im.path) else { throw SampleSkip(file: im.path, "no such file") }
        guard !im.anns.isEmpty else { throw SampleSkip(file: partFile, "image id \(im.id) has no annotations") }
        let sampled = Allocation.sample(im.anns, options: options, rng: &rng)
        var named: [(PartAnn, String)] = []
        for a in sampled {
            guard let n = partNames[a.categoryID] else {
                throw SampleSkip(file: partFile, "annotation \(a.id): category \(a.categoryID) is not in \"categories\"")
            }
            switch n {
            case .whole(let s): named.append((a, s))
            case .part(let obj, let part):
                named.append((a, rng.uniform() < 0.5 ? "\(obj) \(part)" : "the \(part) of the \(obj)"))
            }
        }
        let (q, p) = Allocation.limits(options)
        let questions = Allocation.allocate(named, maxQuestions: q, maxPerQuestion: p, rng: &rng)
        let conversations = Allocation.conversations(questions.map { $0.map { $0.1 } }, options: options, rng: &rng)
        var targets: [SampleTarget] = []
        for (a, n) in questions.joined() {
            do {
                let m = try a.segmentation.get().mask(height: im.height, width: im.width, item: "annotation \(a.id)")
                targets.append(SampleTarget(mask: RLE(encoding: m), name: n, provenance: "ann \(a.id) category \(a.categoryID)"))
            } catch let e as MaskError {
                throw SampleSkip(file: partFile, "bad segmentation: \(e.description)")
            }
        }
        return DataSample(dataset: dataset, subset: subset, index: index, imagePath: im.path, height: im.height,
                          width: im.width, conversations: conversations, targets: targets,
                          source: "\(partFile) image \(im.id)")
    }
}
