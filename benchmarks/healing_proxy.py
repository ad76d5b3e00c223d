"""Short healing proxies on SmolLM2-135M with layers 12-18 and 26 removed (the KL search's choice at -8): one teacher
pass over N_WIN windows (top-64 logits, the input to layer 12, and the outputs of the teacher layers the student's
trained layers stand for), then each variant trains the 10 layers above the cut + final norm (+ lm_head unless
frozen) by top-64 KD for one pass over those windows, from the cached prefix, with AdamW and a cosine schedule, and is
evaluated on the first 16,384 tokens of WikiText-2 test and PTB test (1024-token windows).  A plain-PyTorch loop (not
`hf-streamline heal`) so that every variant shares one teacher pass; the variants' relative order is what it is for.

    NWIN=244 python benchmarks/healing_proxy.py '{"name":"base"}' '{"name":"lr1e-3","lr":1e-3}' \
        '{"name":"hid_cos","hid_w":1.0}' '{"name":"head_frozen","head":false}' '{"name":"hid_nmse","hid_w":1.0,"hid_kind":"nmse"}'
    SEQ=1024 BS=1 NWIN=61 python benchmarks/healing_proxy.py '{"name":"seq1024"}'

Needs the pruned model in $PRUNED (`hf-streamline prune --layers 12,13,14,15,16,17,18,26 --output DIR`); results are
appended to benchmarks/healing_proxy_results.jsonl.
"""
import json, math, os, sys, time, random
from pathlib import Path
import torch, torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(2); torch.manual_seed(0)
ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("HF_STREAMLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
from hf_streamline.loading import bundled_model_dir  # noqa: E402
DENSE = str(bundled_model_dir())
PRUNED = os.environ["PRUNED"]
REMOVED = [12,13,14,15,16,17,18,26]
KEPT = [i for i in range(30) if i not in REMOVED]
CUT = 12
N_WIN = int(os.environ.get("NWIN", 244)); SEQ = int(os.environ.get("SEQ", 256)); BS = int(os.environ.get("BS", 4)); K = 64
tok = AutoTokenizer.from_pretrained(DENSE)
src = str(ROOT / "src/hf_streamline/data/train") + "/"
texts = [open(src + "wikipedia_30_articles.txt").read()]
texts += [json.loads(l)["text"] for l in open(src + "c4_300_docs.jsonl")]
ids = []
for t in texts:
    ids += tok(t)["input_ids"] + [tok.eos_token_id]
wins = [ids[i:i+SEQ] for i in range(0, len(ids) - SEQ, SEQ)]
random.Random(0).shuffle(wins)
wins = torch.tensor(wins[:N_WIN])
print("windows", wins.shape, flush=True)

def load(path):
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32); m.config.use_cache = False; m.eval(); return m

# ---- teacher pass
t0 = time.time()
teacher = load(DENSE)
TV, TI, PREFIX = [], [], []
HID = {j: [] for j in range(CUT, 22)}  # student layer j <- teacher layer KEPT[j] output
cap = {}
hs = [teacher.model.layers[KEPT[j]].register_forward_hook(lambda m,a,o,_j=j: cap.__setitem__(_j, (o[0] if isinstance(o,tuple) else o))) for j in range(CUT,22)]
hs.append(teacher.model.layers[CUT].register_forward_pre_hook(lambda m,a,k: cap.__setitem__("pre", (a[0] if a else k["hidden_states"]))  , with_kwargs=True))
with torch.no_grad():
    for s in range(0, N_WIN, 4):
        x = wins[s:s+4]
        lg = teacher(input_ids=x).logits
        top = lg.topk(K, -1); TV.append(top.values); TI.append(top.indices)
        PREFIX.append(cap["pre"].clone())
        for j in range(CUT, 22): HID[j].append(cap[j].to(torch.bfloat16).clone())
for h in hs: h.remove()
TV, TI, PREFIX = torch.cat(TV), torch.cat(TI), torch.cat(PREFIX)
HID = {j: torch.cat(v) for j, v in HID.items()}
print(f"teacher pass {time.time()-t0:.0f}s", flush=True)
del teacher

def ppl_text(path, n_tok=16384, L=1024):
    t = open(path).read()
    x = tok(t)["input_ids"][:n_tok]
    return torch.tensor(x[: (len(x)//L)*L]).view(-1, L)
EV = {"wiki": ppl_text(ROOT / "src/hf_streamline/data/text/wikitext2_test.raw"), "ptb": ppl_text(SHARED / "text/ptb.test.txt")}

@torch.no_grad()
def evaluate(m):
    out = {}
    for name, X in EV.items():
        nll, n = 0.0, 0
        for i in range(0, len(X), 4):
            x = X[i:i+4]; lg = m(input_ids=x).logits[:, :-1].float()
            nll += F.cross_entropy(lg.reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item(); n += x[:, 1:].numel()
        out[name] = round(math.exp(nll / n), 2)
    return out

def run(name, lr=3e-4, head=True, last=CUT, hid_w=0.0, hid_kind="cos", warmup=0, steps=None, wd=0.0):
    t0 = time.time()
    m = load(PRUNED)
    m.lm_head.weight = torch.nn.Parameter(m.lm_head.weight.detach().clone()); m.config.tie_word_embeddings = False
    for p in m.parameters(): p.requires_grad_(False)
    for l in m.model.layers[last:]:
        for p in l.parameters(): p.requires_grad_(True)
    for p in m.model.norm.parameters(): p.requires_grad_(True)
    m.lm_head.weight.requires_grad_(head)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    nsteps = steps or N_WIN // BS
    sched = lambda s: (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, nsteps - warmup)))
    pos = torch.arange(SEQ)[None]
    losses = []
    m.train()
    for s in range(nsteps):
        b = slice((s * BS) % N_WIN, (s * BS) % N_WIN + BS)
        for g in opt.param_groups: g["lr"] = lr * sched(s)
        if last >= CUT:
            h = PREFIX[b]
            pe = m.model.rotary_emb(h, pos)
            hid_loss = 0.0
            for j in range(CUT, 22):
                h = m.model.layers[j](h, position_embeddings=pe, attention_mask=None, position_ids=pos)
                if hid_w and j >= last:
                    t = HID[j][b].float()
                    if hid_kind == "cos":
                        hid_loss = hid_loss + (1 - F.cosine_similarity(h[:, 1:], t[:, 1:], dim=-1)).mean()
                    else:
                        sc = t[:, 1:].pow(2).mean(-1, keepdim=True).sqrt()
                        hid_loss = hid_loss + ((h[:, 1:] - t[:, 1:]) / sc).pow(2).mean()
            logits = m.lm_head(m.model.norm(h))
        else:
            logits = m(input_ids=wins[b]).logits; hid_loss = 0.0
        sl = F.log_softmax(logits.float(), -1).gather(-1, TI[b])
        p = F.log_softmax(TV[b].float(), -1)
        kl = (p.exp() * (p - sl)).sum(-1).mean()
        loss = kl + (hid_w * hid_loss / (22 - max(last, CUT)) if hid_w else 0.0)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        losses.append(kl.item())
    m.eval()
    ev = evaluate(m)
    rec = {"name": name, "lr": lr, "head": head, "last": last, "hid_w": hid_w, "hid_kind": hid_kind, "warmup": warmup,
           "train_s": round(time.time() - t0), "kl_first10": round(sum(losses[:10]) / 10, 4),
           "kl_last10": round(sum(losses[-10:]) / 10, 4), **ev}
    print(json.dumps(rec), flush=True)
    rec.update(seq=SEQ, batch=BS, windows=N_WIN, loadavg=open("/proc/loadavg").read().strip())
    with open(ROOT / "benchmarks/healing_proxy_results.jsonl", "a") as fh: fh.write(json.dumps(rec) + "\n")

if __name__ == "__main__":
    for spec in sys.argv[1:]:
        kw = json.loads(spec); run(**kw)
