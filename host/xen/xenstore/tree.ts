/**
 * The xenstore tree: nodes with a value, permissions and children, and the edits of
 * docs/misc/xenstore.txt (WRITE creates missing parents, MKDIR, RM removes the subtree, SET_PERMS)
 * with xenstored's permission rules and per-domain quotas.
 *
 * A {@link Tree} is immutable: an edit copies the nodes on the path to the change and shares the
 * rest, so a transaction's snapshot is just a reference to the tree it started from.
 *
 * Children are listed in the order they were created, as C xenstored keeps them.
 */

import { XENSTORE_PAYLOAD_MAX } from "./wire.ts";
import { XenStoreError } from "./xs-error.ts";
import { joinSegments, pathSegments } from "./path.ts";
import { accessFor, allowsRead, allowsWrite, formatPerm, ownerOf, type Caller, type Perms } from "./perms.ts";

/** One node. Never changed once built. */
export interface XsNode {
  readonly value: Uint8Array;
  readonly perms: Perms;
  /** By name, in creation order. */
  readonly children: ReadonlyMap<string, XsNode>;
  /** Changes whenever the value, the permissions or the set of child names changes. */
  readonly gen: number;
}

/** Quotas for unprivileged callers (xenstored's defaults); privileged callers are not counted against them. */
export interface TreeLimits {
  /** The largest value an unprivileged domain may write (xenstored quota-max-entry-size 2048); else ENOSPC. */
  maxValueBytes: number;
  /** The most nodes an unprivileged domain may own (xenstored quota-nb-entry-per-domain 1000); else ENOSPC. */
  maxNodesPerDomain: number;
  /** The most entries in a permission list set by an unprivileged domain (xenstored quota-nb-perms-per-node 5); else ENOSPC. */
  maxPermsPerNode: number;
}

/** The defaults of {@link TreeLimits}. */
export const DEFAULT_TREE_LIMITS: TreeLimits = { maxValueBytes: 2048, maxNodesPerDomain: 1000, maxPermsPerNode: 5 };

/** What an edit needs besides the tree. */
export interface EditContext {
  readonly caller: Caller;
  readonly limits: TreeLimits;
  /** A generation number never handed out before. */
  nextGen(): number;
  /** Told of each path a result depended on (a transaction records these). */
  observe?(path: string): void;
}

/** A change watchers hear of: the path, whether a subtree went with it, and the node's permissions then. */
export interface ChangeEvent {
  readonly path: string;
  /** An RM: watches below the path fire too, with their own path. */
  readonly recursive: boolean;
  /** The node's permissions after the change (before it, for a removal); readers of those hear of it. */
  readonly perms: Perms;
}

/** An edit, as a transaction logs it to replay at commit. */
export type TreeEdit =
  | { readonly kind: "write"; readonly path: string; readonly value: Uint8Array }
  | { readonly kind: "mkdir"; readonly path: string }
  | { readonly kind: "rm"; readonly path: string }
  | { readonly kind: "setPerms"; readonly path: string; readonly perms: Perms };

/** A new tree and the change it made, if any. */
export interface EditResult {
  readonly tree: Tree;
  readonly event: ChangeEvent | undefined;
}

const EMPTY = new Uint8Array(0);
const NO_CHILDREN: ReadonlyMap<string, XsNode> = new Map();

/** One version of the whole store. */
export class Tree {
  /** The root node `/`. */
  readonly root: XsNode;
  /** Nodes owned, by domain. */
  readonly owned: ReadonlyMap<number, number>;

  private constructor(root: XsNode, owned: ReadonlyMap<number, number>) {
    this.root = root;
    this.owned = owned;
  }

  /** A store holding only `/`, owned by dom0, unreadable by others (`n0`), as xenstored starts. */
  static empty(gen: number): Tree {
    return new Tree({ value: EMPTY, perms: [{ domid: 0, access: "n" }], children: NO_CHILDREN, gen }, new Map([[0, 1]]));
  }

  /** The node at a valid absolute path, with no permission check. */
  lookup(absolute: string): XsNode | undefined {
    let node: XsNode | undefined = this.root;
    for (const name of pathSegments(absolute)) {
      node = node.children.get(name);
      if (node === undefined) return undefined;
    }
    return node;
  }

  /** Nodes in the store. */
  get nodeCount(): number {
    let total = 0;
    for (const count of this.owned.values()) total += count;
    return total;
  }

  /** Nodes owned by `domid`. */
  ownedBy(domid: number): number {
    return this.owned.get(domid) ?? 0;
  }

  /** A tree from its root and its ownership counts (which the edits keep right). */
  static of(root: XsNode, owned: ReadonlyMap<number, number>): Tree {
    return new Tree(root, owned);
  }
}

/**
 * The node at `path` if the caller may `need` it. Like xenstored, a missing node answers EACCES
 * rather than ENOENT when the caller could not have seen its nearest existing ancestor either.
 */
export function findNode(tree: Tree, ctx: EditContext, path: string, need: "read" | "write"): XsNode {
  const walk = walkTo(tree, path);
  const allows = need === "read" ? allowsRead : allowsWrite;
  if (walk.node !== undefined) {
    ctx.observe?.(path);
    if (!allows(accessFor(walk.node.perms, ctx.caller))) throw denied(path, need, ctx.caller);
    return walk.node;
  }
  const nearest = walk.chain[walk.chain.length - 1];
  ctx.observe?.(path);
  ctx.observe?.(joinSegments(walk.segments.slice(0, walk.chain.length - 1)));
  if (!allows(accessFor(nearest.perms, ctx.caller))) throw denied(path, need, ctx.caller);
  throw new XenStoreError("ENOENT", `${path} does not exist`);
}

/** Applies one edit. */
export function applyEdit(tree: Tree, ctx: EditContext, edit: TreeEdit): EditResult {
  switch (edit.kind) {
    case "write":
      return writeNode(tree, ctx, edit.path, edit.value);
    case "mkdir":
      return makeNode(tree, ctx, edit.path);
    case "rm":
      return removeNode(tree, ctx, edit.path);
    case "setPerms":
      return setNodePerms(tree, ctx, edit.path, edit.perms);
  }
}

/** WRITE: sets the value, creating the node and any missing parents with empty values. */
export function writeNode(tree: Tree, ctx: EditContext, path: string, value: Uint8Array): EditResult {
  if (value.length > XENSTORE_PAYLOAD_MAX) {
    throw new XenStoreError("E2BIG", `a ${value.length}-byte value for ${path} is over XENSTORE_PAYLOAD_MAX (${XENSTORE_PAYLOAD_MAX})`);
  }
  if (!ctx.caller.privileged && value.length > ctx.limits.maxValueBytes) {
    throw new XenStoreError("ENOSPC", `a ${value.length}-byte value for ${path} is over domain ${ctx.caller.domid}'s quota of ${ctx.limits.maxValueBytes} bytes`);
  }
  const stored = value.slice();
  const walk = walkTo(tree, path);
  if (walk.node !== undefined) {
    ctx.observe?.(path);
    if (!allowsWrite(accessFor(walk.node.perms, ctx.caller))) throw denied(path, "write", ctx.caller);
    const node: XsNode = { ...walk.node, value: stored, gen: ctx.nextGen() };
    return { tree: Tree.of(rebuild(walk.chain, walk.segments, walk.segments.length, node, ctx), tree.owned), event: changed(path, node) };
  }
  return createMissing(tree, ctx, walk, stored);
}

/** MKDIR: makes sure the node exists; an existing one keeps its value (and fires no watch). */
export function makeNode(tree: Tree, ctx: EditContext, path: string): EditResult {
  const walk = walkTo(tree, path);
  if (walk.node !== undefined) {
    ctx.observe?.(path);
    if (!allowsWrite(accessFor(walk.node.perms, ctx.caller))) throw denied(path, "write", ctx.caller);
    return { tree, event: undefined };
  }
  return createMissing(tree, ctx, walk, EMPTY);
}

/**
 * RM: removes the node and everything below it. Removing a node that does not exist is fine if
 * its parent exists (ENOENT otherwise); the root cannot be removed (EINVAL).
 */
export function removeNode(tree: Tree, ctx: EditContext, path: string): EditResult {
  if (path === "/") throw new XenStoreError("EINVAL", "the root / cannot be removed");
  const walk = walkTo(tree, path);
  const depth = walk.segments.length;
  if (walk.node === undefined) {
    ctx.observe?.(path);
    const parentExists = walk.chain.length === depth;
    const nearest = walk.chain[walk.chain.length - 1];
    ctx.observe?.(joinSegments(walk.segments.slice(0, walk.chain.length - 1)));
    if (!allowsWrite(accessFor(nearest.perms, ctx.caller))) throw denied(path, "write", ctx.caller);
    if (parentExists) return { tree, event: undefined };
    throw new XenStoreError("ENOENT", `${path} does not exist, nor does its parent`);
  }
  ctx.observe?.(path);
  if (!allowsWrite(accessFor(walk.node.perms, ctx.caller))) throw denied(path, "write", ctx.caller);
  ctx.observe?.(joinSegments(walk.segments.slice(0, depth - 1)));
  const owned = new Map(tree.owned);
  forgetSubtree(walk.node, owned);
  const root = rebuild(walk.chain, walk.segments, depth, undefined, ctx);
  return { tree: Tree.of(root, owned), event: { path, recursive: true, perms: walk.node.perms } };
}

/**
 * SET_PERMS: only the owner (or a privileged caller) may; only a privileged caller may give the
 * node to another owner (EPERM otherwise).
 */
export function setNodePerms(tree: Tree, ctx: EditContext, path: string, perms: Perms): EditResult {
  if (perms.length === 0) throw new XenStoreError("EINVAL", `no permissions given for ${path}`);
  const encoded = perms.reduce((sum, perm) => sum + formatPerm(perm).length + 1, 0);
  if (encoded > XENSTORE_PAYLOAD_MAX) throw new XenStoreError("E2BIG", `${perms.length} permissions for ${path} would not fit in a reply`);
  const { caller } = ctx;
  if (!caller.privileged && perms.length > ctx.limits.maxPermsPerNode) {
    throw new XenStoreError("ENOSPC", `${perms.length} permissions for ${path} are over domain ${caller.domid}'s quota of ${ctx.limits.maxPermsPerNode}`);
  }
  const node = findNode(tree, ctx, path, "write");
  const walk = walkTo(tree, path);
  if (!caller.privileged && ownerOf(node.perms) !== caller.domid) {
    throw new XenStoreError("EACCES", `domain ${caller.domid} does not own ${path}, so it cannot set its permissions`);
  }
  if (!caller.privileged && ownerOf(perms) !== ownerOf(node.perms)) {
    throw new XenStoreError("EPERM", `only a privileged domain can give ${path} to another owner (domain ${ownerOf(perms)})`);
  }
  let owned = tree.owned;
  if (ownerOf(perms) !== ownerOf(node.perms)) {
    const counts = new Map(owned);
    addCount(counts, ownerOf(node.perms), -1);
    addCount(counts, ownerOf(perms), 1);
    owned = counts;
  }
  const updated: XsNode = { ...node, perms: perms.slice(), gen: ctx.nextGen() };
  return { tree: Tree.of(rebuild(walk.chain, walk.segments, walk.segments.length, updated, ctx), owned), event: changed(path, updated) };
}

/** Where a path walk got: the nodes from the root down (as far as they exist) and the node itself. */
interface Walk {
  readonly segments: string[];
  /** chain[i] is the node i components below the root. */
  readonly chain: XsNode[];
  readonly node: XsNode | undefined;
}

function walkTo(tree: Tree, path: string): Walk {
  const segments = pathSegments(path);
  const chain: XsNode[] = [tree.root];
  for (const name of segments) {
    const next = chain[chain.length - 1].children.get(name);
    if (next === undefined) return { segments, chain, node: undefined };
    chain.push(next);
  }
  return { segments, chain, node: chain[chain.length - 1] };
}

/** Creates the missing end of a walk: intermediate nodes empty, the last with `value`. */
function createMissing(tree: Tree, ctx: EditContext, walk: Walk, value: Uint8Array): EditResult {
  const { caller } = ctx;
  const path = joinSegments(walk.segments);
  const existing = walk.chain.length;
  const nearest = walk.chain[existing - 1];
  ctx.observe?.(path);
  ctx.observe?.(joinSegments(walk.segments.slice(0, existing - 1)));
  if (!allowsWrite(accessFor(nearest.perms, caller))) throw denied(path, "write", caller);
  // New nodes inherit their parent's permissions; an unprivileged domain owns what it creates.
  const perms: Perms = caller.privileged ? nearest.perms : [{ domid: caller.domid, access: nearest.perms[0].access }, ...nearest.perms.slice(1)];
  const created = walk.segments.length - existing + 1;
  const owner = ownerOf(perms);
  if (!caller.privileged && tree.ownedBy(owner) + created > ctx.limits.maxNodesPerDomain) {
    throw new XenStoreError("ENOSPC", `creating ${path} would take domain ${owner} over its quota of ${ctx.limits.maxNodesPerDomain} nodes`);
  }
  const leaf: XsNode = { value, perms, children: NO_CHILDREN, gen: ctx.nextGen() };
  let sub = leaf;
  for (let i = walk.segments.length - 1; i >= existing; i--) {
    sub = { value: EMPTY, perms, children: new Map([[walk.segments[i], sub]]), gen: ctx.nextGen() };
  }
  const owned = new Map(tree.owned);
  addCount(owned, owner, created);
  const root = rebuild(walk.chain, walk.segments, existing, sub, ctx);
  return { tree: Tree.of(root, owned), event: changed(path, leaf) };
}

/**
 * A new root with `sub` (or nothing) at `depth` components along `segments`, copying the chain
 * above it. The parent's generation changes only if the set of its children's names does.
 */
function rebuild(chain: readonly XsNode[], segments: readonly string[], depth: number, sub: XsNode | undefined, ctx: EditContext): XsNode {
  if (depth === 0) return sub ?? chain[0];
  let child = sub;
  for (let level = depth - 1; level >= 0; level--) {
    const parent = chain[level];
    const name = segments[level];
    const children = new Map(parent.children);
    if (child === undefined) children.delete(name);
    else children.set(name, child);
    const namesChanged = level === depth - 1 && (child === undefined || !parent.children.has(name));
    child = { ...parent, children, gen: namesChanged ? ctx.nextGen() : parent.gen };
  }
  return child as XsNode;
}

/** Takes every node of a removed subtree off its owner's count. */
function forgetSubtree(node: XsNode, owned: Map<number, number>): void {
  const stack: XsNode[] = [node];
  while (stack.length > 0) {
    const next = stack.pop()!;
    addCount(owned, ownerOf(next.perms), -1);
    for (const child of next.children.values()) stack.push(child);
  }
}

function addCount(owned: Map<number, number>, domid: number, delta: number): void {
  const count = (owned.get(domid) ?? 0) + delta;
  if (count === 0) owned.delete(domid);
  else owned.set(domid, count);
}

function changed(path: string, node: XsNode): ChangeEvent {
  return { path, recursive: false, perms: node.perms };
}

function denied(path: string, need: "read" | "write", caller: Caller): XenStoreError {
  return new XenStoreError("EACCES", `domain ${caller.domid} may not ${need} ${path}`);
}
