// `completion bash|zsh|fish`: shell completion scripts generated from the
// commander program, so they offer exactly its commands and flags. Workflow
// names come from `agentflow list -o name`, run with the namespace, context and
// kubeconfig flags already on the command line.
import type { Command, Option } from 'commander';
import { PROCESS_COMMANDS, SHELLS, type Shell } from './program.ts';

/** Program-level flags whose value is passed on to `list -o name`. */
const CONNECTION_FLAGS = ['-n', '--namespace', '--context', '--kubeconfig'];
/** Flags whose value is a file name. */
const FILE_FLAGS = ['-f', '--filename', '--kubeconfig'];

interface Spec {
  name: string;
  aliases: string[];
  description: string;
  flags: string[];
  /** Flags taking a value, each with its choices (empty: free). */
  valued: Map<string, string[]>;
  /** The first argument is a Workflow's name. */
  workflowArg: boolean;
  /** Choices of the first argument. */
  argChoices: string[];
}

const flagsOf = (o: Option) => [o.short, o.long].filter((f): f is string => !!f);

function spec(cmd: Command): Spec {
  const valued = new Map<string, string[]>();
  const flags: string[] = [];
  for (const o of cmd.options) {
    if (o.hidden) continue;
    for (const f of flagsOf(o)) {
      flags.push(f);
      if (o.required || o.optional) valued.set(f, o.argChoices ?? []);
    }
  }
  const first = cmd.registeredArguments[0];
  return {
    name: cmd.name(),
    aliases: cmd.aliases(),
    description: cmd.summary() || cmd.description(),
    flags: [...new Set([...flags, '-h', '--help'])],
    valued,
    workflowArg: first?.name() === 'name',
    argChoices: cmd.name() === 'completion' ? [...SHELLS] : (first?.argChoices ?? []),
  };
}

function specs(program: Command): { global: Spec; commands: Spec[] } {
  const commands = program.commands
    .filter((c) => !(c.name() in PROCESS_COMMANDS))
    .map(spec)
    .concat(
      Object.entries(PROCESS_COMMANDS).map(([name, description]) => ({
        name,
        aliases: [],
        description,
        flags: [],
        valued: new Map(),
        workflowArg: false,
        argChoices: [],
      })),
    );
  return { global: spec(program), commands };
}

const names = (s: Spec) => [s.name, ...s.aliases];
const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** `case` patterns `cmd:-f|cmd:--filename` for the flags of each command that take a value. */
function valuedPatterns(g: Spec, cmds: Spec[], pick: (flag: string, choices: string[]) => boolean): string {
  const pats: string[] = [];
  for (const [f, ch] of g.valued) if (pick(f, ch)) pats.push(`*:${f}`);
  for (const c of cmds)
    for (const n of names(c)) for (const [f, ch] of c.valued) if (pick(f, ch)) pats.push(`${n}:${f}`);
  return pats.join('|');
}

/** The `case "$cmd:$prev"` arms: files, choices, free values. */
function valueArms(g: Spec, cmds: Spec[], indent: string, files: string, words: (w: string) => string): string {
  const arms: string[] = [];
  const filePats = valuedPatterns(g, cmds, (f) => FILE_FLAGS.includes(f));
  if (filePats) arms.push(`${indent}${filePats}) ${files}; return;;`);
  const byChoices = new Map<string, string[]>();
  for (const c of [g, ...cmds]) {
    for (const [f, ch] of c.valued) {
      if (!ch.length || FILE_FLAGS.includes(f)) continue;
      const key = ch.join(' ');
      const pats = byChoices.get(key) ?? [];
      pats.push(...(c === g ? [`*:${f}`] : names(c).map((n) => `${n}:${f}`)));
      byChoices.set(key, pats);
    }
  }
  for (const [key, pats] of byChoices) arms.push(`${indent}${pats.join('|')}) ${words(key)}; return;;`);
  const free = valuedPatterns(g, cmds, (f, ch) => !FILE_FLAGS.includes(f) && ch.length === 0);
  if (free) arms.push(`${indent}${free}) return;;`);
  return arms.join('\n');
}

function bash(program: Command, bin: string): string {
  const { global: g, commands } = specs(program);
  const fn = `_${bin.replace(/[^A-Za-z0-9]/g, '_')}`;
  const allValued = valuedPatterns(g, commands, () => true);
  const conn = CONNECTION_FLAGS.map((f) => `*:${f}`).join('|');
  const wfCmds = commands.filter((c) => c.workflowArg).flatMap(names);
  const flagArms = commands
    .filter((c) => c.flags.length)
    .map(
      (c) =>
        `      ${names(c).join('|')}) COMPREPLY=($(compgen -W ${quote([...new Set([...c.flags, ...g.flags])].join(' '))} -- "$cur"));;`,
    )
    .join('\n');
  const argArms = commands
    .filter((c) => c.argChoices.length)
    .map(
      (c) =>
        `    ${names(c).join('|')}) ((npos == 0)) && COMPREPLY=($(compgen -W ${quote(c.argChoices.join(' '))} -- "$cur"));;`,
    )
    .join('\n');
  return `# ${bin} completion for bash. Load it with:  source <(${bin} completion bash)
${fn}() {
  local cur=\${COMP_WORDS[COMP_CWORD]} prev=\${COMP_WORDS[COMP_CWORD-1]}
  local cmd= w i npos=0
  local -a conn=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=\${COMP_WORDS[i]}
    case "$cmd:$w" in
      ${conn}) conn+=("$w" "\${COMP_WORDS[i+1]}"); ((i++));;
      ${allValued}) ((i++));;
      *:-*) ;;
      *) if [[ -z $cmd ]]; then cmd=$w; else ((npos++)); fi;;
    esac
  done
  case "$cmd:$prev" in
${valueArms(g, commands, '    ', 'COMPREPLY=($(compgen -f -- "$cur"))', (w) => `COMPREPLY=($(compgen -W ${quote(w)} -- "$cur"))`)}
  esac
  if [[ -z $cmd ]]; then
    if [[ $cur == -* ]]; then
      COMPREPLY=($(compgen -W ${quote(g.flags.join(' '))} -- "$cur"))
    else
      COMPREPLY=($(compgen -W ${quote(commands.flatMap(names).join(' '))} -- "$cur"))
    fi
    return
  fi
  if [[ $cur == -* ]]; then
    case $cmd in
${flagArms}
    esac
    return
  fi
  case $cmd in
    ${wfCmds.join('|')})
      if ((npos == 0)); then
        local wfs
        wfs=$("\${COMP_WORDS[0]}" "\${conn[@]}" list -o name 2>/dev/null)
        COMPREPLY=($(compgen -W "\${wfs//workflow.agentflow.io\\//}" -- "$cur"))
      fi;;
${argArms}
  esac
}
complete -F ${fn} ${bin}
`;
}

function zsh(program: Command, bin: string): string {
  const { global: g, commands } = specs(program);
  const fn = `_${bin.replace(/[^A-Za-z0-9]/g, '_')}`;
  const allValued = valuedPatterns(g, commands, () => true);
  const conn = CONNECTION_FLAGS.map((f) => `*:${f}`).join('|');
  const wfCmds = commands.filter((c) => c.workflowArg).flatMap(names);
  const described = commands.map((c) => quote(`${c.name}:${c.description.replace(/:/g, '\\:')}`)).join(' ');
  const flagArms = commands
    .filter((c) => c.flags.length)
    .map((c) => `      (${names(c).join('|')}) compadd -- ${[...new Set([...c.flags, ...g.flags])].join(' ')};;`)
    .join('\n');
  const argArms = commands
    .filter((c) => c.argChoices.length)
    .map((c) => `    (${names(c).join('|')}) (( npos == 0 )) && compadd -- ${c.argChoices.join(' ')};;`)
    .join('\n');
  const arms = valueArms(g, commands, '    ', '_files', (w) => `compadd -- ${w}`)
    .split('\n')
    .map((l) => l.replace(/^(\s*)(\S+)\) /, '$1($2) '))
    .join('\n');
  return `#compdef ${bin}
# ${bin} completion for zsh. Load it with:  source <(${bin} completion zsh)
# (after compinit), or save it as _${bin} in a directory of your $fpath.
${fn}() {
  local cur=\${words[CURRENT]} prev=\${words[CURRENT-1]} cmd= w
  local -i i npos=0
  local -a conn commands
  for (( i = 2; i < CURRENT; i++ )); do
    w=\${words[i]}
    case "$cmd:$w" in
      (${conn}) conn+=("$w" "\${words[i+1]}"); (( i++ ));;
      (${allValued}) (( i++ ));;
      (*:-*) ;;
      (*) if [[ -z $cmd ]]; then cmd=$w; else (( npos++ )); fi;;
    esac
  done
  case "$cmd:$prev" in
${arms}
  esac
  if [[ -z $cmd ]]; then
    if [[ $cur == -* ]]; then
      compadd -- ${g.flags.join(' ')}
    else
      commands=(${described})
      _describe command commands
    fi
    return
  fi
  if [[ $cur == -* ]]; then
    case $cmd in
${flagArms}
    esac
    return
  fi
  case $cmd in
    (${wfCmds.join('|')})
      if (( npos == 0 )); then
        local -a wfs
        wfs=(\${(f)"$(\${words[1]} $conn list -o name 2>/dev/null)"})
        compadd -- \${wfs#workflow.agentflow.io/}
      fi;;
${argArms}
  esac
}
if [[ "\${funcstack[1]}" == "${fn}" ]]; then
  ${fn} "$@"
else
  compdef ${fn} ${bin}
fi
`;
}

function fish(program: Command, bin: string): string {
  const { commands } = specs(program);
  const lines = [
    `# ${bin} completion for fish. Load it with:  ${bin} completion fish | source`,
    `complete -c ${bin} -f`,
    `function __${bin}_workflows`,
    '    set -l conn',
    '    set -l words (commandline -opc)',
    '    for i in (seq 2 (count $words))',
    `        if contains -- $words[$i] ${CONNECTION_FLAGS.join(' ')}`,
    '            set -a conn $words[$i] $words[(math $i + 1)]',
    '        end',
    '    end',
    `    ${bin} $conn list -o name 2>/dev/null | string replace -r '^[^/]*/' ''`,
    'end',
  ];
  const opt = (o: { short?: string | undefined; long?: string | undefined }) =>
    [o.short && `-s ${o.short.slice(1)}`, o.long && `-l ${o.long.slice(2)}`].filter(Boolean).join(' ');
  const optionLines = (cmd: Command, cond: string) =>
    cmd.options
      .filter((o) => !o.hidden)
      .map((o) => {
        const value = o.required || o.optional;
        const files = flagsOf(o).some((f) => FILE_FLAGS.includes(f));
        const choices = o.argChoices?.length ? ` -a ${quote(o.argChoices.join(' '))}` : '';
        const mode = !value ? '' : files ? ' -r -F' : ' -r -f';
        return `complete -c ${bin} ${cond} ${opt(o)}${mode}${choices} -d ${quote(o.description)}`;
      });
  lines.push(...optionLines(program, ''));
  for (const c of commands) {
    lines.push(`complete -c ${bin} -n __fish_use_subcommand -a ${c.name} -d ${quote(c.description)}`);
  }
  for (const cmd of program.commands.filter((c) => !(c.name() in PROCESS_COMMANDS))) {
    const s = spec(cmd);
    const cond = `-n '__fish_seen_subcommand_from ${names(s).join(' ')}'`;
    lines.push(...optionLines(cmd, cond));
    if (s.workflowArg) lines.push(`complete -c ${bin} ${cond} -a '(__${bin}_workflows)'`);
    if (s.argChoices.length) lines.push(`complete -c ${bin} ${cond} -a ${quote(s.argChoices.join(' '))}`);
  }
  return `${lines.join('\n')}\n`;
}

/** The completion script for `shell`, for the command as installed (`agentflow`). */
export function completionScript(program: Command, shell: Shell, bin = 'agentflow'): string {
  if (shell === 'bash') return bash(program, bin);
  if (shell === 'zsh') return zsh(program, bin);
  return fish(program, bin);
}
