"""The tours of README.md and docs/TOUR.md, taken again against a fresh server.

In a fenced block of either document, a line that starts with `$ ` is a shell
command and the lines after it, up to the next `$ ` line or the end of the
block, are what it printed.  Each document's commands run in order, in a
scratch directory, against a fresh server started as `make run` starts it
(test/server.py: serve.py under Granian) over the embedded default
configuration, on a free port: the only change made to a command is that port
for the documents' 8080 (and the scratch directory for /tmp/, so that runs do
not share files).  Each output must be the one printed, except for what the
tour's introduction says differs:

- the headers `Server`, `Date`, `Connection` and `Transfer-Encoding`, which the
  documents leave out, and `…`, which marks a cut;
- times: HTTP dates, ISO times, `in 0.0s`;
- contexts, clocks (each partition's incarnation and the counters) and the key
  the server chooses, with the cursor that follows it and its place in a
  listing: each is learnt the first time it is printed, must then be the same
  wherever the document prints it again, and replaces the printed one in the
  commands that follow (a context sent back, the key in a URL);
- a version's id (its ETag), learnt like a context;
- SHA-256 digests (`sha256`, `Repr-Digest`) and hex dumps of the random bytes
  the tour draws from /dev/urandom (any other digest must be the one printed);
- which owners had acknowledged a write (`acknowledged`,
  `owners_acknowledged`), and a Content-Length that follows them or a cursor.
"""
import base64
import contextlib
import difflib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

from test.server import REPO, StoreServer

DOCUMENTED_PORT = 8080
DROPPED_HEADERS = re.compile(r'(Server|Date|Connection|Transfer-Encoding):', re.IGNORECASE)
# A write is answered once W owners hold it; the rest go on in the background.
# Someone typing the tour gives them the time to finish before the next
# command (the reconciler's run at the end finds nothing left to do); so does
# the test.
WRITE = re.compile(r'-X (PUT|POST|DELETE)\b')
PAUSE_AFTER_WRITE = 0.2
CURL_PROGRESS = re.compile(r'% Total|Dload|--:--:--')

# What varies between runs.  'bind': learnt on first sight, the same after;
# 'random': bound too, and may differ from the document only for random bytes;
# 'any': matched by the pattern alone.
TOKENS = [
    ('context', 'bind', r'eyJ[A-Za-z0-9_-]{16,}', r'eyJ[A-Za-z0-9_-]+'),
    ('actor', 'bind', r'\b[A-Za-z0-9_-]+\.[0-9a-f]{12}\b', None),
    ('counter', 'bind', r'(?<=": )\d{16}\b', r'\d{16}'),
    ('sha256', 'random', r'(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])', r'[0-9a-f]{64}'),
    ('repr-digest', 'random', r'(?<=sha-256=:)[A-Za-z0-9+/]{43}=', r'[A-Za-z0-9+/]{43}='),
    ('key', 'bind', r'(?<=/keys/)[0-9a-f]{32}(?![0-9a-f])', r'[0-9a-f]{32}'),
    ('version', 'bind', r'(?:(?<=")|(?<=&quot;))[0-9a-f]{32}(?=\\?"|:|&quot;)', r'[0-9a-f]{32}'),
    ('cursor', 'bind', r'(?<=cursor=)[A-Za-z0-9_-]+|(?<="next_cursor": ")[A-Za-z0-9_-]+',
     r'[A-Za-z0-9_-]+'),
    ('hexdump', 'random', r'^[0-9a-f]{8}: .*$', r'[0-9a-f]{8}: .*'),
    ('http-date', 'any', r'(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT',
     None),
    ('iso-time', 'any', r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ', None),
    ('seconds', 'any', r'(?<= in )\d+\.\d+s\b', None),
    ('acknowledged', 'any', r'(?<="acknowledged": )\[[^\]]*\]', r'\[[^\]]*\]'),
    ('owners', 'any', r'(?<="owners_acknowledged": )\d+', r'\d+'),
    ('length', 'length', r'(?<=^[Cc]ontent-[Ll]ength: )\d+', r'\d+'),
    ('cut', 'any', r'…', r'[\s\S]*?'),
]
TOKEN = re.compile('|'.join('(?P<%s>%s)' % (name.replace('-', '_'), found)
                            for name, _, found, _ in TOKENS), re.MULTILINE)
KINDS = {name.replace('-', '_'): (kind, pattern or found) for name, kind, found, pattern in TOKENS}


def token_pattern(name, text):
    if name == 'actor':   # the partition's name stays, its incarnation varies
        return re.escape(text.rsplit('.', 1)[0]) + r'\.[0-9a-f]{12}'
    return KINDS[name][1]


def tour(path):
    """[(line number, command, printed output)] of a document, in order."""
    steps, fenced, step = [], False, None
    with open(path, encoding='utf-8') as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if line.lstrip().startswith('```'):
                fenced, step = not fenced, None
            elif fenced and line.startswith('$ '):
                step = (number, line[2:], [])
                steps.append(step)
            elif step:
                step[2].append(line)
    return [(number, command, '\n'.join(output).strip('\n')) for number, command, output in steps]


def as_printed(output):
    """curl's output as the documents print it: LF line ends, without the headers they leave out."""
    lines, in_head = [], False
    for line in output.replace('\r\n', '\n').split('\n'):
        if line.startswith('HTTP/1.'):
            in_head = True
        elif not line:
            in_head = False
        elif in_head and DROPPED_HEADERS.match(line):
            continue
        lines.append(line)
    return '\n'.join(lines).strip('\n')


def unlist(text, key):
    """The text without `key`'s entry in a JSON list (the server's key falls
    anywhere in a listing), and whether it was there."""
    found = re.search(r'(?m)^\s*"%s",?\n' % re.escape(key), text)
    if not found:
        return text, False
    text = text[:found.start()] + text[found.end():]
    return re.sub(r',(\n\s*\])', r'\1', text), True


class Tour:
    """One document's commands, run in order against one server."""

    def __init__(self, path, server, directory):
        self.path, self.server, self.directory = path, server, directory
        self.bound = {}            # printed text -> what this run printed there
        self.keys = set()          # printed keys the server chose
        self.random_etags = set()  # ETags of the files drawn from /dev/urandom
        self.environment = dict(os.environ, STORE_CONFIG=server.config_path,
                                no_proxy='127.0.0.1,localhost')

    def command(self, printed):
        command = printed.replace('127.0.0.1:%d' % DOCUMENTED_PORT, '127.0.0.1:%d' % self.server.port)
        command = command.replace('/tmp/', self.directory + '/')
        for text in sorted(self.bound, key=len, reverse=True):
            command = command.replace(text, self.bound[text])
        return command

    def run(self, number, printed_command, printed_output):
        output = self.execute(printed_command)
        problem = self.compare(printed_output, output)
        if problem:
            diff = '\n'.join(difflib.unified_diff(self.expected(printed_output, output), output.split('\n'),
                                                  'printed', 'this run', lineterm=''))
            raise AssertionError('%s:%d: %s\n$ %s\n%s' % (os.path.relpath(self.path, REPO), number,
                                                        problem, printed_command, diff))

    def execute(self, printed_command):
        """Run a printed command; what it printed, as the documents print it."""
        command = self.command(printed_command)
        result = subprocess.run(['bash', '-c', command], cwd=self.directory, env=self.environment,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        # A terminal shows stdout, and stderr without the progress meter curl
        # prints there only because its stdout is not a terminal here.
        errors = [line for line in result.stderr.decode('utf-8', 'replace').split('\n')
                  if not CURL_PROGRESS.search(line)]
        output = as_printed(result.stdout.decode('utf-8', 'replace') + '\n'.join(errors))
        if '/dev/urandom' in command:
            drawn = command.rsplit('>', 1)[1].strip()
            with open(os.path.join(self.directory, drawn), 'rb') as f:
                self.random_etags.add(hashlib.sha256(f.read()).hexdigest())
        if WRITE.search(command):
            time.sleep(PAUSE_AFTER_WRITE)
        return output

    def learn(self, printed, output):
        """Bind what varies in a printed output that no longer matches to this
        run's, token by token in order (for retake)."""
        for name, (kind, _) in KINDS.items():
            if kind not in ('bind', 'random'):
                continue
            ours = [m.group() for m in TOKEN.finditer(printed) if m.lastgroup == name]
            theirs = [m.group() for m in TOKEN.finditer(output) if m.lastgroup == name]
            for text, value in zip(ours, theirs):
                self.bound.setdefault(text, value)

    def substitute(self, text):
        """Printed text with this run's values for what was learnt."""
        for printed in sorted(self.bound, key=len, reverse=True):
            text = text.replace(printed, self.bound[printed])
        return text

    def expected(self, printed, output):
        """The printed lines for a diff, each shown as the line of this run it
        stands for where one matches it but for what may vary."""
        lines = output.split('\n')
        shown = []
        for line in printed.split('\n'):
            pattern = self.pattern(line, True)[0] if '…' not in line else None
            shown.append(next((actual for actual in lines if pattern and re.fullmatch(pattern, actual)), line))
        return shown

    def compare(self, printed, output):
        """None when `output` is what the document printed; else what differs."""
        for key in self.keys:
            printed, listed = unlist(printed, key)
            if listed:
                output, found = unlist(output, self.bound[key])
                if not found:
                    return 'the key the server chose is not listed'
        varying_length = '"owners_acknowledged"' in output or re.search(r'"next_cursor": "', output)
        pattern, groups = self.pattern(printed, varying_length)
        match = re.fullmatch(pattern, output)
        if not match:
            return 'the output differs from the one printed'
        for group, (name, text) in groups.items():
            value = match.group(group)
            if KINDS[name][0] == 'random' and value != text and not self.random_etags:
                return '%s differs: %s, printed %s' % (name, value, text)
            digest = base64.b64decode(value).hex() if name == 'repr_digest' else value
            if name in ('sha256', 'repr_digest') and value != text and digest not in self.random_etags:
                return 'SHA-256 differs: %s, printed %s' % (value, text)
            self.bound[text] = value
            if name == 'key':
                self.keys.add(text)
        return None

    def pattern(self, printed, varying_length):
        """A regular expression for the printed output, and its groups: {group: (token, printed text)}."""
        parts, groups, named, position = [], {}, {}, 0
        while position < len(printed):
            # Text learnt before, or earlier in this output, wherever it is printed again.
            known = [(printed.find(text, position), text) for text in list(self.bound) + list(named)]
            known = min(((at, -len(text), text) for at, text in known if at >= 0), default=None)
            found = TOKEN.search(printed, position)
            if known and (not found or known[0] <= found.start()):
                at, _, text = known
                parts.append(re.escape(printed[position:at]))
                parts.append('(?P=%s)' % named[text] if text in named else re.escape(self.bound[text]))
                position = at + len(text)
                continue
            if not found:
                break
            name, text = found.lastgroup, found.group()
            kind = KINDS[name][0]
            parts.append(re.escape(printed[position:found.start()]))
            if kind in ('bind', 'random'):
                named[text] = 'g%d' % len(groups)
                groups[named[text]] = (name, text)
                parts.append('(?P<%s>%s)' % (named[text], token_pattern(name, text)))
            elif kind == 'length' and not varying_length:
                parts.append(re.escape(text))
            else:
                parts.append(token_pattern(name, text))
            position = found.end()
        parts.append(re.escape(printed[position:]))
        return ''.join(parts), groups


@contextlib.contextmanager
def fresh_tour(path):
    """A Tour of the document at path, over a fresh server and scratch directory."""
    with open(os.path.join(REPO, 'configuration.cfg'), encoding='utf-8') as f:
        server = StoreServer.running(f.read())
    directory = tempfile.mkdtemp(prefix='kvstore-tour-')
    try:
        # `.venv/bin/python sync.py`, as from the repository's directory
        os.symlink(sys.prefix, os.path.join(directory, '.venv'))
        os.symlink(os.path.join(REPO, 'sync.py'), os.path.join(directory, 'sync.py'))
        yield Tour(path, server, directory)
    finally:
        server.stop()
        server.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


def retake(document):
    """Take a document's tour again and write what the server printed into it,
    for after a change of behaviour: `python -m test.test_readme --retake
    docs/TOUR.md`, then read the diff.  An output with a cut (`…`) keeps its
    text, with this run's values; it is named if it no longer matches."""
    path = os.path.join(REPO, document)
    with open(path, encoding='utf-8') as f:
        lines = f.read().split('\n')
    taken = {}
    with fresh_tour(path) as run:
        for number, command, printed in tour(path):
            output = run.execute(command)
            if run.compare(printed, output):
                run.learn(printed, output)
                if '…' in printed:
                    print('%s:%d: a cut output no longer matches: fix it by hand' % (document, number))
            taken[number] = (run.substitute(command), run.substitute(printed) if '…' in printed else output)
    rewritten, number = [], 0
    while number < len(lines):
        line, number = lines[number], number + 1
        if number not in taken:
            rewritten.append(line)
            continue
        command, output = taken[number]
        end = number
        while end < len(lines) and not lines[end].startswith('$ ') and not lines[end].lstrip().startswith('```'):
            end += 1
        blank = len(lines[number:end]) - len('\n'.join(lines[number:end]).rstrip('\n').split('\n'))
        rewritten += ['$ ' + command] + (output.split('\n') if output else []) + [''] * blank
        number = end
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(rewritten))


class TourTest(unittest.TestCase):
    """Every command of a tour prints what its document says it prints."""

    def take(self, document):
        path = os.path.join(REPO, document)
        steps = tour(path)
        self.assertGreater(len(steps), 5, '%s has no tour' % document)
        with fresh_tour(path) as run:
            for step in steps:
                run.run(*step)

    def test_readme(self):
        self.take('README.md')

    def test_tour(self):
        self.take('docs/TOUR.md')


class LinkTest(unittest.TestCase):
    """Every relative link of README.md and docs/ names a file that exists, and
    an anchor that one of its headings makes."""

    def test_links(self):
        documents = ['README.md'] + ['docs/' + name for name in sorted(os.listdir(os.path.join(REPO, 'docs')))
                                     if name.endswith('.md')]
        broken = []
        for document in documents:
            with open(os.path.join(REPO, document), encoding='utf-8') as f:
                text = re.sub(r'(?ms)^```.*?^```', '', f.read())
            for target in re.findall(r'\]\(([^)\s]+)\)', text):
                if re.match(r'[a-z]+:', target):
                    continue
                file, _, anchor = target.partition('#')
                linked = os.path.normpath(os.path.join(os.path.dirname(document), file)) if file else document
                if not os.path.exists(os.path.join(REPO, linked)):
                    broken.append('%s: %s (no such file)' % (document, target))
                elif anchor and anchor not in anchors(os.path.join(REPO, linked)):
                    broken.append('%s: %s (no such heading)' % (document, target))
        self.assertEqual(broken, [])


class ArchitectureTest(unittest.TestCase):
    """docs/ARCHITECTURE.md names files that exist, and every module of the
    coordinator, the HTTP rules, the engines and the reconciler."""

    def test_the_architecture_names_the_code_as_it_is(self):
        with open(os.path.join(REPO, 'docs', 'ARCHITECTURE.md'), encoding='utf-8') as f:
            text = f.read()
        named = set(re.findall(r'`((?:kvstore/)?[\w/]+\.(?:py|sql|cfg))`', text))
        missing = sorted(n for n in named if not any(os.path.exists(os.path.join(REPO, d, n))
                                                   for d in ('', 'kvstore/coordinator', 'kvstore/http',
                                                             'kvstore/engines', 'kvstore/reconciler')))
        self.assertEqual(missing, [], 'named in docs/ARCHITECTURE.md but not in the code')
        unnamed = []
        for layer in ('coordinator', 'http', 'engines', 'reconciler'):
            for module in sorted(os.listdir(os.path.join(REPO, 'kvstore', layer))):
                if module.endswith('.py') and module != '__init__.py' and module not in text:
                    unnamed.append('kvstore/%s/%s' % (layer, module))
        self.assertEqual(unnamed, [], 'modules docs/ARCHITECTURE.md does not name')


def anchors(path):
    """The anchors GitHub makes of a Markdown file's headings."""
    if not path.endswith('.md'):
        return set()
    with open(path, encoding='utf-8') as f:
        text = re.sub(r'(?ms)^```.*?^```', '', f.read())
    found = set()
    for heading in re.findall(r'(?m)^#+ (.*)$', text):
        slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
        taken = slug
        while taken in found:
            taken = '%s-%d' % (slug, len([a for a in found if a.startswith(slug)]))
        found.add(taken)
    return found


if __name__ == '__main__':
    if sys.argv[1:2] == ['--retake']:
        for name in sys.argv[2:]:
            retake(name)
    else:
        unittest.main()
