# What the Vagrantfile asks of Vagrant for one provider, read by Vagrant's own
# loader (Debian's vagrant gem) without a provider installed and without booting:
# the box, its architecture (nil where Vagrant predates box architectures) and
# what the `vagrant up` checks say ("ok" or their refusal).
#
#   ruby tests/vagrant_plan.rb ROOT PROVIDER     (VAGRANT_HOST_ARCHITECTURE picks the host)
#
# Prints one JSON object.
require "rubygems"
gem "vagrant"
require "vagrant"
require "json"

root, provider = ARGV
env = Vagrant::Environment.new(cwd: root, ui_class: Vagrant::UI::Silent)
config = env.vagrantfile.machine_config(:default, provider.to_sym, env.boxes, nil, false)[:config]
plan = {
  "box" => config.vm.box,
  "box_architecture" => config.vm.respond_to?(:box_architecture) ? config.vm.box_architecture : nil,
  "vagrant" => Vagrant::VERSION,
}
machine = Struct.new(:provider_name, :config).new(provider.to_sym, config)
begin
  config.trigger.before_triggers.select { |t| Array(t.command).include?(:up) && t.ruby_block }
        .each { |t| t.ruby_block.call(env, machine) }
  plan["up"] = "ok"
rescue Vagrant::Errors::VagrantError => e
  plan["up"] = e.message
end
puts JSON.generate(plan)
