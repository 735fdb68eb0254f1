output "group_name" {
  description = "The agent auto scaling group's name."
  value       = aws_autoscaling_group.agents.name
}

output "group_arn" {
  description = "The agent auto scaling group's ARN."
  value       = aws_autoscaling_group.agents.arn
}

output "launch_template_id" {
  description = "The agents' launch template."
  value       = aws_launch_template.agent.id
}

output "launch_template_version" {
  description = "The launch template version new agents start from."
  value       = aws_launch_template.agent.latest_version
}

output "ami_id" {
  description = "The image agents boot."
  value       = local.ami_id
}

output "lifecycle_hook_name" {
  description = "The termination hook the coordinator completes after a drain."
  value       = aws_autoscaling_lifecycle_hook.drain.name
}
