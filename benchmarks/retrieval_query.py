"""Query a running `align serve` one request at a time: latency p50/p99 and queries/s per k, and a check that
the answers are right for the digits corpus (benchmarks/retrieval_corpus.py).

Text queries are the demo's caption templates for each digit ("a handwritten seven."); a query counts as
right when its top hit's caption names the same digit (as a word or a numeral). Also fetches the page and the
top hit's media, and sends one bad request (empty query, expects 400). Standard library only.

    align serve INDEX --model RUN --port 8765 &
    python benchmarks/retrieval_query.py --url http://127.0.0.1:8765 --n 100 --k 10 1000
"""
import argparse
import json
import time
import urllib.error
import urllib.parse
import urllib.request

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a handwritten {word}.", "the number {num} written by hand.", "a photo of the digit {word}.",
             "a blurry {num}, drawn by hand."]


def get(url, timeout=60):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def names_digit(caption, d):
    words = caption.lower().replace(",", " ").replace(".", " ").split()
    return WORDS[d] in words or str(d) in words


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8765", help="the server")
    p.add_argument("--n", type=int, default=100, help="queries per k")
    p.add_argument("--k", type=int, nargs="+", default=[10, 1000], help="results per query")
    p.add_argument("--target", default="image", help="indexed modality to search")
    args = p.parse_args(argv)

    status, body, ctype = get(args.url + "/")
    print(f"GET / -> {status}, {len(body)} bytes, {ctype}")
    for k in args.k:
        times, right, first = [], 0, None
        t_all = time.perf_counter()
        for i in range(args.n):
            d = i % 10
            q = TEMPLATES[(i // 10) % len(TEMPLATES)].format(word=WORDS[d], num=d)
            url = f"{args.url}/search?" + urllib.parse.urlencode({"q": q, "k": k, "target": args.target})
            t = time.perf_counter()
            status, body, _ = get(url)
            times.append((time.perf_counter() - t) * 1e3)
            if status != 200:
                raise SystemExit(f"{url}: HTTP {status}: {body[:200]!r}")
            hits = json.loads(body)["results"][args.target]
            right += bool(hits) and names_digit(hits[0]["caption"], d)
            first = first or (q, hits[0])
        wall = time.perf_counter() - t_all
        times.sort()
        p50, p99 = times[len(times) // 2], times[min(len(times) - 1, int(0.99 * len(times)))]
        print(f"k={k}: {args.n} queries in {wall:.1f} s = {args.n / wall:.1f} queries/s, p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms, top hit names the queried digit {right}/{args.n}")
    q, h = first
    status, body, ctype = get(args.url + h["media_url"]) if h.get("media_url") else (None, b"", "")
    print(f"example: {q!r} -> #1 {h['key']} {h['caption']!r} score {h['score']:.3f}; {h.get('media_url')} -> "
          f"{status}, {len(body)} bytes, {ctype}")
    status, body, _ = get(args.url + "/search?q=")
    print(f"GET /search?q= -> {status} {body.decode()[:100]}")


if __name__ == "__main__":
    main()
